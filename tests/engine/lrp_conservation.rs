//! LRP conserves relevance: with every bias (and BatchNorm shift) zeroed and a vanishing
//! epsilon, the input relevance of each sample sums to the relevance put on the output —
//! one for the one-hot start, the target logit when starting from the logit.
//! AlphaBeta(2, 1) composites are left out: where a neuron has no negative contribution the
//! beta share is 0/0 := 0 and alpha's share alone (twice the relevance) flows down, in zennit
//! as here — the rule itself is not conservative there. Likewise ZPlus after a residual sum:
//! the Norm rule hands a branch relevance in proportion to its (possibly negative) value, and
//! where ZPlus's positive-part denominator is 0 that relevance has nowhere to go; so on the
//! ResNet only Epsilon and Gamma (whose denominators follow the real output) are checked.

use std::collections::HashMap;

use crate::common::{devices, fixture, Refs};
use candle_core::{DType, Tensor, D};
use candle_xai::import::graph_json::GraphSpec;
use candle_xai::import::StateDict;
use candle_xai::lrp::Composite;
use candle_xai::methods::LrpParams;
use candle_xai::methods::*;
use candle_xai::{explain, Model};

/// The MNIST model with biases, BatchNorm shifts and running means set to zero.
fn bias_free(name: &str, device: &candle_xai::Device) -> Model {
    let bytes = std::fs::read(fixture(&format!("mnist/{name}.safetensors"))).unwrap();
    let tensors = candle_core::safetensors::load_buffer(&bytes, &candle_core::Device::Cpu).unwrap();
    let zeroed: HashMap<String, Tensor> = tensors
        .into_iter()
        .filter(|(_, t)| t.dtype() == DType::F32)
        .map(|(k, t)| {
            let zero = k.ends_with(".bias") || k.ends_with(".running_mean");
            (k, if zero { t.zeros_like().unwrap() } else { t })
        })
        .collect();
    let graph = GraphSpec::from_json(&std::fs::read_to_string(fixture(&format!("mnist/{name}.graph.json"))).unwrap());
    Model::from_state_dict(
        &StateDict::new(zeroed, name),
        Some(graph.unwrap()),
        None,
        &candle_core::Device::Cpu,
    )
    .unwrap()
    .to_device(device)
    .unwrap()
}

/// Each sample's input relevance, summed.
fn relevance_sums(out: &Explanation) -> Vec<f32> {
    let sums = out.attributions.flatten_from(1).unwrap().sum(D::Minus1).unwrap();
    sums.to_device(&candle_core::Device::Cpu)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

#[test]
fn every_composite_conserves_relevance_without_biases() {
    for device in devices() {
        for name in ["mlp", "vgg", "resnet"] {
            let model = bias_free(name, &device);
            let refs = Refs::load(&fixture(&format!("mnist/{name}_refs.safetensors")));
            let inputs = refs.f32("inputs");
            let logits = model
                .predict(&inputs)
                .unwrap()
                .to_device(&candle_core::Device::Cpu)
                .unwrap();
            let conservative: &[Composite] = match name {
                "resnet" => &[Composite::UniformEpsilon, Composite::EpsilonGammaBox],
                _ => &[
                    Composite::UniformEpsilon,
                    Composite::EpsilonGammaBox,
                    Composite::EpsilonPlus,
                    Composite::EpsilonPlusFlat,
                ],
            };
            // Starting from the logit instead of the one-hot scales the output relevance on
            // the host: the GPU checks the one-hot start only.
            let on_cpu = matches!(device, candle_xai::Device::Candle(candle_core::Device::Cpu));
            let starts: &[bool] = if on_cpu { &[false, true] } else { &[false] };
            for &composite in conservative {
                for &start_from_logit in starts {
                    let mut params = LrpParams::new(composite);
                    params.params.epsilon = 1e-9;
                    params.params.stabilizer = 1e-9;
                    params.start_from_logit = start_from_logit;
                    let request = Request {
                        method: Method::Lrp(params),
                        targets: Targets::Classes(refs.targets()),
                        layer: None,
                        memory_limit: None,
                        share: None,
                    };
                    let out = explain(&model, &inputs, &request, &mut Progress::none()).unwrap();
                    let sums = relevance_sums(&out);
                    for (row, (&sum, &target)) in sums.iter().zip(&out.targets).enumerate() {
                        let expected = if start_from_logit {
                            logits
                                .get(row)
                                .unwrap()
                                .get(target)
                                .unwrap()
                                .to_scalar::<f32>()
                                .unwrap()
                        } else {
                            1.0
                        };
                        let err = (sum - expected).abs() / expected.abs().max(1e-3);
                        assert!(
                            err < 1e-3,
                            "{name} {composite:?} logit={start_from_logit} row {row}: sum {sum} vs {expected}"
                        );
                    }
                }
            }
        }
    }
}

/// A small model with every operation of today's CNNs (LayerNorm over channels and over the
/// last axis between permutes, a dense layer over positions, GELU, layer scale, residual sums,
/// squeeze-and-excitation with SiLU and Sigmoid, Hardswish, a ShuffleNet split with its
/// concatenation and channel shuffle), bias-free: lxt's rules (Gamma, identity, uniform)
/// conserve relevance through all of it, as they do in lxt.
const MODERN_BLOCKS: &str = r#"{ "input_channels": 3, "nodes": [
  {"name": "stem", "op": "Conv2d", "kernel_size": 4, "stride": 4},
  {"name": "stem_norm", "op": "LayerNorm2d", "eps": 1e-6},
  {"name": "dw", "op": "Conv2d", "kernel_size": 3, "padding": 1, "groups": 8},
  {"name": "to_nhwc", "op": "Permute", "dims": [0, 2, 3, 1]},
  {"name": "norm", "op": "LayerNorm", "eps": 1e-6},
  {"name": "expand", "op": "Linear"},
  {"name": "gelu", "op": "GELU"},
  {"name": "project", "op": "Linear"},
  {"name": "to_nchw", "op": "Permute", "dims": [0, 3, 1, 2]},
  {"name": "scale", "op": "LayerScale"},
  {"name": "res", "op": "Add", "inputs": ["stem_norm", "scale"]},
  {"name": "se_pool", "op": "AdaptiveAvgPool2d", "output_size": 1},
  {"name": "se_fc1", "op": "Conv2d", "kernel_size": 1},
  {"name": "se_act", "op": "SiLU"},
  {"name": "se_fc2", "op": "Conv2d", "kernel_size": 1},
  {"name": "se_gate", "op": "Sigmoid"},
  {"name": "se", "op": "Mul", "inputs": ["res", "se_gate"]},
  {"name": "hs", "op": "Hardswish"},
  {"name": "half_a", "op": "Narrow", "start": 0, "length": 4},
  {"name": "half_b", "op": "Narrow", "start": 4, "length": 4, "inputs": ["hs"]},
  {"name": "branch", "op": "Conv2d", "kernel_size": 1},
  {"name": "cat", "op": "Concat", "inputs": ["half_a", "branch"]},
  {"name": "shuffle", "op": "ChannelShuffle", "groups": 2},
  {"name": "pool", "op": "AdaptiveAvgPool2d", "output_size": 1},
  {"name": "flatten", "op": "Flatten"},
  {"name": "fc", "op": "Linear"} ] }"#;

fn modern_blocks() -> Model {
    let shapes: [(&str, &[usize]); 11] = [
        ("stem.weight", &[8, 3, 4, 4]),
        ("stem_norm.weight", &[8]),
        ("dw.weight", &[8, 1, 3, 3]),
        ("norm.weight", &[8]),
        ("expand.weight", &[16, 8]),
        ("project.weight", &[8, 16]),
        ("scale.gamma", &[8]),
        ("se_fc1.weight", &[2, 8, 1, 1]),
        ("se_fc2.weight", &[8, 2, 1, 1]),
        ("branch.weight", &[4, 4, 1, 1]),
        ("fc.weight", &[5, 8]),
    ];
    let tensors = shapes
        .iter()
        .map(|&(name, shape)| {
            let numel = shape.iter().product();
            let (lo, hi) = if name.contains("norm") || name.contains("scale") {
                (0.5, 1.5)
            } else {
                (-1.0, 1.0)
            };
            let values = crate::common::seeded_weights::seeded_values(name, numel, lo, hi);
            (
                name.to_string(),
                Tensor::from_vec(values, shape, &candle_core::Device::Cpu).unwrap(),
            )
        })
        .collect();
    let graph = GraphSpec::from_json(MODERN_BLOCKS).unwrap();
    Model::from_state_dict(
        &StateDict::new(tensors, "modern blocks"),
        Some(graph),
        None,
        &candle_core::Device::Cpu,
    )
    .unwrap()
}

#[test]
fn gamma_identity_conserves_through_modern_blocks() {
    let inputs = Tensor::from_vec(
        crate::common::seeded_weights::seeded_values("input", 2 * 3 * 16 * 16, -2.0, 2.0),
        (2, 3, 16, 16),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    for device in devices() {
        let model = modern_blocks().to_device(&device).unwrap();
        let mut params = LrpParams::new(Composite::GammaIdentity);
        params.params.stabilizer = 1e-9;
        let request = Request {
            method: Method::Lrp(params),
            targets: Targets::Classes(vec![1, 3]),
            layer: None,
            memory_limit: None,
            share: None,
        };
        let out = explain(&model, &inputs, &request, &mut Progress::none()).unwrap();
        let sums = relevance_sums(&out);
        for (row, sum) in sums.iter().enumerate() {
            assert!(
                (sum - 1.0).abs() < 1e-3,
                "{device:?} row {row}: relevance sums to {sum}"
            );
        }
    }
}

/// CP-LRP through a vision transformer (the tiny timm ViT of tests/fixtures/ops): with every
/// bias zeroed, the attention weights held constant and Gamma / Epsilon / the identity rule
/// elsewhere, the relevance reaching the tokens (after the class token and the position
/// embedding, which are constants and take no share) sums to one per sample. AttnLRP is not
/// checked: its softmax rule hands part of the relevance to the softmax's own bias term.
#[test]
fn cp_lrp_conserves_through_a_vision_transformer() {
    let bytes = std::fs::read(fixture("ops/vit.safetensors")).unwrap();
    let tensors = candle_core::safetensors::load_buffer(&bytes, &candle_core::Device::Cpu).unwrap();
    let zeroed: HashMap<String, Tensor> = tensors
        .into_iter()
        .map(|(k, t)| {
            let zero = k.ends_with(".bias");
            (k, if zero { t.zeros_like().unwrap() } else { t })
        })
        .collect();
    let graph = GraphSpec::from_json(&std::fs::read_to_string(fixture("ops/vit.graph.json")).unwrap()).unwrap();
    let cpu = Model::from_state_dict(
        &StateDict::new(zeroed, "vit"),
        Some(graph),
        None,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let refs = Refs::load(&fixture("ops/vit_refs.safetensors"));
    for device in devices() {
        let model = cpu.to_device(&device).unwrap();
        let mut params = LrpParams::new(Composite::CpLrp);
        params.params.epsilon = 1e-9;
        params.params.stabilizer = 1e-9;
        let request = Request {
            method: Method::Lrp(params),
            targets: Targets::Classes(refs.targets()),
            layer: Some("pos_embed".into()),
            memory_limit: None,
            share: None,
        };
        let out = explain(&model, &refs.f32("inputs"), &request, &mut Progress::none()).unwrap();
        for (row, sum) in relevance_sums(&out).iter().enumerate() {
            assert!(
                (sum - 1.0).abs() < 1e-4,
                "{device:?} row {row}: relevance sums to {sum}"
            );
        }
    }
}
