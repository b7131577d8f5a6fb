//! What each fuzz target does with its bytes, shared by the targets (`fuzz_targets/*.rs`,
//! run by `cargo +nightly fuzz run <target>`) and by `tests/fuzz_corpora.rs`, which replays
//! every committed corpus file on stable in the normal test run. Each body may return any
//! error; a panic, an abort, a stack overflow or a hang is the bug the fuzzer looks for.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_xai::import::graph_json::GraphSpec;
use candle_xai::import::StateDict;
use candle_xai::lrp::Composite;
use candle_xai::methods::{IntegratedGradientsParams, LrpParams};
use candle_xai::{explain, Method, Model, Progress, Request};

/// Every explanation a target runs may hold this much: fuzzed shapes must be refused by the
/// budget, not by the machine.
const MEMORY_LIMIT: u64 = 256 << 20;

/// What a fuzz target runs on its bytes.
pub type Body = fn(&[u8]);

/// The fuzz targets by name, for the replay test.
pub const TARGETS: [(&str, Body); 5] = [
    ("safetensors", safetensors),
    ("pth", pth),
    ("graph_json", graph_json),
    ("inputs", inputs),
    ("image", image),
];

/// A safetensors model file: parsed, then recognised as a torchvision layout.
pub fn safetensors(data: &[u8]) {
    if let Ok((state, _)) = StateDict::from_safetensors(data, "fuzz.safetensors", &Device::Cpu) {
        let _ = Model::from_state_dict(&state, None, None, &Device::Cpu);
    }
}

/// A PyTorch checkpoint: the zip or legacy container, the pickle, the storages.
pub fn pth(data: &[u8]) {
    if let Ok(state) = candle_xai::import::pth::state_dict_from_pth(data, "fuzz.pth", &Device::Cpu) {
        let _ = Model::from_state_dict(&state, None, None, &Device::Cpu);
    }
}

/// A graph JSON over the tiny model's weights, explained on a small photo-sized input.
pub fn graph_json(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(spec) = GraphSpec::from_json(text) else { return };
    let Ok(model) = Model::from_state_dict(&tiny_weights(), Some(spec), None, &Device::Cpu) else {
        return;
    };
    let channels = model.input_channels();
    if let Ok(input) = Tensor::ones((1, channels, 16, 16), DType::F32, &Device::Cpu) {
        explain_every_kind(&model, &input);
    }
}

/// An inputs file, explained by the tiny model when it holds RGB images.
pub fn inputs(data: &[u8]) {
    if let Ok(file) = candle_xai::files::read_inputs(data, "fuzz.safetensors") {
        explain_every_kind(&tiny_model(), &file.inputs);
    }
}

/// A photo: decoded, preprocessed as for ImageNet, explained by the tiny model.
pub fn image(data: &[u8]) {
    let Ok(photo) = candle_xai::image::decode(data, "fuzz.png") else {
        return;
    };
    if let Ok(prepared) = candle_xai::image::imagenet_preprocess(&photo) {
        explain_every_kind(&tiny_model(), &prepared.tensor);
    }
}

/// One method of each kind: a single pass, several passes, LRP's rules.
fn explain_every_kind(model: &Model, input: &Tensor) {
    let ig = IntegratedGradientsParams {
        n_steps: 3,
        ..Default::default()
    };
    for method in [
        Method::InputXGradient,
        Method::IntegratedGradients(ig),
        Method::Lrp(LrpParams::new(Composite::EpsilonGammaBox)),
    ] {
        let request = Request {
            memory_limit: Some(MEMORY_LIMIT),
            ..Request::new(method)
        };
        let _ = explain(model, input, &request, &mut Progress::none());
    }
}

/// Conv2d(3, 4, 3) and Linear(4, 3) weights, under the names the seed graphs use.
fn tiny_weights() -> StateDict {
    let tensor = |n: usize, shape: &[usize]| {
        let values: Vec<f32> = (0..n).map(|i| ((i as f32) * 0.7).sin() * 0.3).collect();
        Tensor::from_vec(values, shape, &Device::Cpu).expect("sizes match")
    };
    let tensors = HashMap::from([
        ("conv.weight".to_string(), tensor(108, &[4, 3, 3, 3])),
        ("conv.bias".to_string(), tensor(4, &[4])),
        ("fc.weight".to_string(), tensor(12, &[3, 4])),
        ("fc.bias".to_string(), tensor(3, &[3])),
    ]);
    StateDict::new(tensors, "tiny")
}

/// conv -> relu -> adaptive pool -> flatten -> fc over [`tiny_weights`].
fn tiny_model() -> Model {
    let spec = GraphSpec::from_json(TINY_GRAPH).expect("the tiny graph parses");
    Model::from_state_dict(&tiny_weights(), Some(spec), None, &Device::Cpu).expect("the tiny model builds")
}

pub const TINY_GRAPH: &str = r#"{"input_channels": 3, "nodes": [
    {"name": "conv", "op": "Conv2d", "kernel_size": 3},
    {"name": "relu", "op": "ReLU"},
    {"name": "pool", "op": "AdaptiveAvgPool2d", "output_size": 1},
    {"name": "flatten", "op": "Flatten"},
    {"name": "fc", "op": "Linear"}]}"#;
