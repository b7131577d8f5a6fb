//! Each layer's forward and input-VJP against PyTorch on the awkward cases: max-pool windows
//! with exact ties (PyTorch routes the gradient to the first maximum in row-major window
//! order, and so do we), ceil_mode and padding, average pooling's divisors, adaptive bins,
//! and convolutions with stride on odd sizes, dilation, groups and non-square kernels; and
//! GroupNorm with smooth activations. Fixtures: `scripts/make_pool_fixtures.py`,
//! `scripts/make_op_fixtures.py`.

use std::collections::HashMap;

use crate::common::{assert_close, devices, fixture, Refs};
use candle_xai::import::graph_json::{GraphSpec, NodeSpec, OpSpec};
use candle_xai::import::StateDict;

#[test]
fn layers_match_pytorch_forward_and_input_gradient() {
    let refs = Refs::load(&fixture("layer_edge_cases.safetensors"));
    let cases: Vec<serde_json::Value> = serde_json::from_str(&refs.metadata["cases"]).unwrap();
    assert!(cases.len() >= 15, "all edge cases present");
    for device in devices() {
        for case in &cases {
            let name = case["name"].as_str().unwrap();
            let mut node = case.clone();
            node["name"] = serde_json::Value::String(name.to_string());
            let node: NodeSpec = serde_json::from_value(node).unwrap();
            assert!(!matches!(node.op, OpSpec::Identity), "{name} parsed");
            let mut tensors = HashMap::new();
            for param in ["weight", "bias"] {
                if let Some(t) = refs.tensors.get(&format!("{name}.{param}")) {
                    tensors.insert(format!("{name}.{param}"), t.clone());
                }
            }
            let spec = GraphSpec {
                input_channels: 0,
                min_input_size: None,
                default_cam_layer: None,
                nodes: vec![node],
            };
            let (graph, _) = spec.build(&StateDict::new(tensors, name)).unwrap();
            let graph = graph.to_device(&device).unwrap();
            let input = device.upload(refs.get(&format!("{name}.input"))).unwrap();
            let activations = graph.forward(&input, None).unwrap();
            assert_close(
                &format!("{name} forward on {device:?}"),
                &activations.output().to_host().unwrap(),
                refs.get(&format!("{name}.output")),
                1e-5,
            );
            let upstream = device.upload(refs.get(&format!("{name}.upstream"))).unwrap();
            let grad = graph.gradient(&activations, graph.output_id(), upstream, 0).unwrap();
            assert_close(
                &format!("{name} input gradient on {device:?}"),
                &grad.to_host().unwrap(),
                refs.get(&format!("{name}.input_grad")),
                1e-5,
            );
        }
    }
}

/// GroupNorm (affine and not), GELU's tanh form and Tanh in a small network, on every
/// backend, against PyTorch's float64 logits and input gradient (scripts/make_op_fixtures.py).
#[test]
fn group_norm_and_smooth_activations_match_pytorch() {
    let dir = |name: &str| crate::common::fixture(&format!("ops/{name}"));
    let bytes = std::fs::read(dir("group_norm.safetensors")).unwrap();
    let graph = candle_xai::import::graph_json::GraphSpec::from_json(
        &std::fs::read_to_string(dir("group_norm.graph.json")).unwrap(),
    )
    .unwrap();
    let (state, _) =
        candle_xai::import::StateDict::from_safetensors(&bytes, "group_norm", &candle_core::Device::Cpu).unwrap();
    let refs = crate::common::Refs::load(&dir("group_norm_refs.safetensors"));
    let cpu = candle_xai::Model::from_state_dict(&state, Some(graph), None, &candle_core::Device::Cpu).unwrap();
    for device in crate::common::devices() {
        let model = cpu.to_device(&device).unwrap();
        let inputs = refs.f32("inputs");
        crate::common::assert_close("logits", &model.predict(&inputs).unwrap(), &refs.f32("logits"), 1e-5);
        let out = crate::common::explain_refs(
            &model,
            &refs,
            candle_xai::methods::Method::Gradient(Default::default()),
            None,
        );
        crate::common::assert_close(
            &format!("saliency on {device:?}"),
            &out.attributions,
            &refs.f32("saliency"),
            1e-5,
        );
    }
}
