//! torchvision layouts recognised from names and shapes, forced architectures, the forward pass
//! against PyTorch, and `.pth` checkpoints. Fixtures: `scripts/make_layout_fixtures.py`.

use std::collections::HashMap;

use crate::common::{assert_close, fixture, seeded_weights, Refs, REL_TOL};
use candle_core::{DType, Device, Tensor};
use candle_xai::import::graph_json::{GraphSpec, NodeSpec, OpSpec};
use candle_xai::import::pth::{looks_like_pth, state_dict_from_pth};
use candle_xai::import::{torchvision, write_safetensors, StateDict};
use candle_xai::{Error, Model};

const ARCHS: &[&str] = &[
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "vgg11",
    "vgg13",
    "vgg16",
    "vgg19",
    "vgg11_bn",
    "vgg13_bn",
    "vgg16_bn",
    "vgg19_bn",
    "mobilenet_v2",
    "alexnet",
    "efficientnet_b0",
    "efficientnet_b1",
    "efficientnet_b2",
    "efficientnet_b3",
    "efficientnet_b4",
    "efficientnet_b5",
    "efficientnet_b6",
    "efficientnet_b7",
    "efficientnet_v2_s",
    "efficientnet_v2_m",
    "efficientnet_v2_l",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "convnext_tiny",
    "convnext_small",
    "convnext_base",
    "convnext_large",
    "densenet121",
    "densenet161",
    "densenet169",
    "densenet201",
    "regnet_x_400mf",
    "regnet_x_800mf",
    "regnet_x_1_6gf",
    "regnet_x_3_2gf",
    "regnet_x_8gf",
    "regnet_x_16gf",
    "regnet_x_32gf",
    "regnet_y_400mf",
    "regnet_y_800mf",
    "regnet_y_1_6gf",
    "regnet_y_3_2gf",
    "regnet_y_8gf",
    "regnet_y_16gf",
    "regnet_y_32gf",
    "regnet_y_128gf",
    "shufflenet_v2_x0_5",
    "shufflenet_v2_x1_0",
    "shufflenet_v2_x1_5",
    "shufflenet_v2_x2_0",
    "squeezenet1_0",
    "squeezenet1_1",
];

fn layout(arch: &str) -> Vec<(String, Vec<usize>)> {
    let path = fixture(&format!("layouts/{arch}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// Zero tensors with these names and shapes.
fn zeros(layout: &[(String, Vec<usize>)]) -> StateDict {
    let tensors = layout
        .iter()
        .map(|(name, shape)| {
            (
                name.clone(),
                Tensor::zeros(shape.as_slice(), DType::F32, &Device::Cpu).unwrap(),
            )
        })
        .collect();
    StateDict::new(tensors, "layout fixture")
}

fn zeros_of(arch: &str) -> StateDict {
    zeros(&layout(arch))
}

fn node<'a>(spec: &'a GraphSpec, name: &str) -> &'a NodeSpec {
    spec.nodes
        .iter()
        .find(|n| n.name == name)
        .unwrap_or_else(|| panic!("no node `{name}`"))
}

/// Held by the tests that rebuild the largest models (RegNet-Y-128GF, ViT-H/14: each near 3 GB
/// of weights), so that they do not run at the same time on a small machine.
static LARGEST_MODELS: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn recognises_every_torchvision_layout() {
    let _one_at_a_time = LARGEST_MODELS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    for &arch in ARCHS {
        // Seeded weights with the file's names and shapes (the .json layout's), and PyTorch's
        // float64 logits for them.
        let (refs, state, input) = forward_fixture(arch);
        let names = |state: &StateDict| {
            let mut names: Vec<(String, Vec<usize>)> = state
                .names()
                .map(|n| (n.to_string(), state.shape(n).unwrap().to_vec()))
                .collect();
            names.sort();
            names
        };
        let mut expected = layout(arch);
        expected.sort();
        assert_eq!(
            names(&state),
            expected,
            "{arch}: the forward fixture's tensors are the layout's"
        );
        let (name, spec) = torchvision::recognise(&state).unwrap_or_else(|e| panic!("{arch}: {e}"));
        assert_eq!(name, arch);
        assert_eq!(spec.input_channels, 3);
        // Forcing the same architecture gives the same graph.
        assert_eq!(torchvision::spec_for(arch, &state).unwrap(), spec, "{arch}");
        // It builds, reads every tensor, and its Grad-CAM layer exists.
        let model = Model::from_state_dict(&state, None, None, &Device::Cpu).unwrap_or_else(|e| panic!("{arch}: {e}"));
        assert_eq!(model.architecture(), arch);
        assert_eq!(model.num_classes(), Some(10), "{arch}");
        let cam = model.default_cam_layer().unwrap();
        assert!(model
            .graph()
            .node(cam)
            .answers_to(spec.default_cam_layer.as_deref().unwrap()));
        let (family_min, cam_layer) = match arch {
            a if a.starts_with("resnet") => (1, "layer4"),
            "vgg11" => (32, "features.19"),
            "vgg11_bn" => (32, "features.27"),
            "vgg16" => (32, "features.29"),
            "vgg16_bn" => (32, "features.42"),
            a if a.starts_with("vgg") => (32, ""),
            "mobilenet_v2" => (1, "features.18"),
            "alexnet" => (63, "features.11"),
            "efficientnet_b0" | "efficientnet_b1" | "efficientnet_b7" => (1, "features.8"),
            "efficientnet_v2_s" => (1, "features.7"),
            a if a.starts_with("efficientnet") => (1, ""),
            "mobilenet_v3_small" => (1, "features.12"),
            "mobilenet_v3_large" => (1, "features.16"),
            // The 4x4 stem and three 2x2 downsamplings, all stride = kernel, no padding.
            a if a.starts_with("convnext") => (32, "features.7"),
            // PyTorch's own smallest: the stem's two stride-2 steps, then three 2x2 transitions.
            a if a.starts_with("densenet") => (29, "features.norm5"),
            a if a.starts_with("regnet") => (1, "trunk_output"),
            a if a.starts_with("shufflenet") => (1, "conv5"),
            // The stride-2 stem and three ceil-mode max pools (PyTorch's smallest, too).
            "squeezenet1_0" => (21, "features.12"),
            "squeezenet1_1" => (17, "features.12"),
            _ => unreachable!(),
        };
        assert_eq!(spec.min_input_size, Some(family_min), "{arch}");
        if !cam_layer.is_empty() {
            assert_eq!(spec.default_cam_layer.as_deref(), Some(cam_layer), "{arch}");
        }

        let logits = model.predict(&input).unwrap();
        assert_close(&format!("{arch} logits"), &logits, &refs.f32("logits"), REL_TOL);
        // The smallest input side really is the smallest that runs.
        let min = family_min;
        let side = |s: usize| Tensor::zeros((1, 3, s, s), DType::F32, &Device::Cpu).unwrap();
        let on_model = |t: Tensor| candle_xai::Tensor::from_candle(t).unwrap();
        model
            .graph()
            .predict(&on_model(side(min)))
            .unwrap_or_else(|e| panic!("{arch} at {min}x{min}: {e}"));
        if min > 1 {
            assert!(
                model.graph().predict(&on_model(side(min - 1))).is_err(),
                "{arch} runs at {}",
                min - 1
            );
            assert!(matches!(
                model.predict(&side(min - 1)),
                Err(Error::InputTooSmall { .. })
            ));
        }
    }
}

#[test]
fn nodes_carry_torchvision_module_names() {
    let (_, spec) = torchvision::recognise(&zeros_of("resnet50")).unwrap();
    let names: Vec<&str> = spec.nodes.iter().map(|n| n.name.as_str()).collect();
    let first_block = [
        "layer1.0.conv1",
        "layer1.0.bn1",
        "layer1.0.relu",
        "layer1.0.conv2",
        "layer1.0.bn2",
        "layer1.0.relu_1",
        "layer1.0.conv3",
        "layer1.0.bn3",
        "layer1.0.downsample.0",
        "layer1.0.downsample.1",
        "layer1.0.add",
        "layer1.0.relu_2",
    ];
    let start = names.iter().position(|&n| n == "layer1.0.conv1").unwrap();
    assert_eq!(&names[..start], ["conv1", "bn1", "relu", "maxpool"]);
    assert_eq!(&names[start..start + first_block.len()], first_block);
    assert_eq!(&names[names.len() - 3..], ["avgpool", "flatten", "fc"]);
    assert_eq!(
        node(&spec, "layer1.0.downsample.0").inputs.as_deref(),
        Some(&["maxpool".to_string()][..])
    );
    assert_eq!(
        node(&spec, "layer1.0.add").inputs.as_deref(),
        Some(&["layer1.0.bn3".to_string(), "layer1.0.downsample.1".to_string()][..])
    );
    assert_eq!(node(&spec, "layer1.0.relu_2").aliases, ["layer1.0"]);
    assert_eq!(node(&spec, "layer1.2.relu_2").aliases, ["layer1.2", "layer1"]);
    assert_eq!(node(&spec, "layer4.2.relu_2").aliases, ["layer4.2", "layer4"]);
    assert_eq!(node(&spec, "layer1.0.relu_1").params, None);
    // Bottleneck v1.5: the stride sits in conv2 and the downsample of a stage's first block.
    let stride = |name: &str| match node(&spec, name).op {
        OpSpec::Conv2d { stride, .. } => stride.hw().0,
        _ => panic!("{name} is not a conv"),
    };
    assert_eq!(
        (
            stride("layer2.0.conv1"),
            stride("layer2.0.conv2"),
            stride("layer2.0.downsample.0")
        ),
        (1, 2, 2)
    );
    assert_eq!(stride("layer1.0.downsample.0"), 1);

    let (_, spec) = torchvision::recognise(&zeros_of("resnet18")).unwrap();
    assert_eq!(node(&spec, "layer1.1.relu_1").aliases, ["layer1.1", "layer1"]);
    assert!(
        spec.nodes.iter().all(|n| !n.name.starts_with("layer1.0.downsample")),
        "BasicBlock layer1 has no downsample"
    );
    assert_eq!(
        node(&spec, "layer1.0.add").inputs.as_deref(),
        Some(&["layer1.0.bn2".to_string(), "maxpool".to_string()][..])
    );
    assert_eq!(
        (stride_of(&spec, "layer3.0.conv1"), stride_of(&spec, "layer3.0.conv2")),
        (2, 1)
    );

    let (_, spec) = torchvision::recognise(&zeros_of("mobilenet_v2")).unwrap();
    assert_eq!(node(&spec, "features.0.2").aliases, ["features.0"]);
    // features.1: no expand conv, no residual; its output is its last BN.
    assert_eq!(node(&spec, "features.1.conv.2").aliases, ["features.1"]);
    // features.2: stride 2, no residual; features.3: residual.
    assert!(spec.nodes.iter().all(|n| n.name != "features.2.add"));
    assert_eq!(node(&spec, "features.3.add").aliases, ["features.3"]);
    assert_eq!(
        node(&spec, "features.3.add").inputs.as_deref(),
        Some(&["features.3.conv.3".to_string(), "features.2.conv.3".to_string()][..])
    );
    match node(&spec, "features.2.conv.1.0").op {
        OpSpec::Conv2d { groups, stride, .. } => assert_eq!((groups, stride.hw().0), (96, 2)),
        _ => panic!("features.2.conv.1.0 is not a conv"),
    }
    assert_eq!(node(&spec, "features.18.2").aliases, ["features.18"]);
    let names: Vec<&str> = spec.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(
        &names[names.len() - 4..],
        ["avgpool", "flatten", "classifier.0", "classifier.1"]
    );
    let adds = spec.nodes.iter().filter(|n| matches!(n.op, OpSpec::Add)).count();
    assert_eq!(adds, 10, "torchvision's MobileNetV2 has 10 residual blocks");

    let (_, spec) = torchvision::recognise(&zeros_of("vgg16_bn")).unwrap();
    let pools: Vec<&str> = spec
        .nodes
        .iter()
        .filter(|n| matches!(n.op, OpSpec::MaxPool2d { .. }))
        .map(|n| n.name.as_str())
        .collect();
    assert_eq!(
        pools,
        ["features.6", "features.13", "features.23", "features.33", "features.43"]
    );
    let (_, spec) = torchvision::recognise(&zeros_of("alexnet")).unwrap();
    let names: Vec<&str> = spec.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(
        &names[13..],
        [
            "avgpool",
            "flatten",
            "classifier.0",
            "classifier.1",
            "classifier.2",
            "classifier.3",
            "classifier.4",
            "classifier.5",
            "classifier.6"
        ]
    );
}

fn stride_of(spec: &GraphSpec, name: &str) -> usize {
    match node(spec, name).op {
        OpSpec::Conv2d { stride, .. } => stride.hw().0,
        _ => panic!("{name} is not a conv"),
    }
}

#[test]
fn forced_architecture_must_fit() {
    for (arch, weights) in [
        ("resnet18", "resnet18"),
        ("vgg16_bn", "vgg16_bn"),
        ("alexnet", "alexnet"),
        ("mobilenet_v2", "mobilenet_v2"),
    ] {
        let model = Model::from_state_dict(&zeros_of(weights), None, Some(arch), &Device::Cpu).unwrap();
        assert_eq!(model.architecture(), arch);
    }
    for (arch, weights) in [
        ("resnet34", "resnet18"),
        ("resnet18", "resnet34"),
        ("resnet50", "resnet34"),
        ("resnet101", "resnet50"),
        ("vgg16", "vgg16_bn"),
        ("vgg16_bn", "vgg16"),
        ("vgg11", "vgg13"),
        ("mobilenet_v2", "alexnet"),
        ("alexnet", "vgg11"),
    ] {
        let state = zeros_of(weights);
        match torchvision::spec_for(arch, &state) {
            Err(Error::ArchitectureMismatch { arch: a, reason }) => {
                assert_eq!(a, arch);
                assert!(!reason.is_empty());
            }
            other => panic!("{arch} on {weights} weights: expected ArchitectureMismatch, got {other:?}"),
        }
        let err = Model::from_state_dict(&state, None, Some(arch), &Device::Cpu).unwrap_err();
        assert!(
            matches!(err, Error::ArchitectureMismatch { .. }),
            "{arch} on {weights}: {err}"
        );
    }
    // A weight of the wrong size is named.
    let mut layout = layout("resnet18");
    layout.iter_mut().find(|(n, _)| n == "layer2.0.conv1.weight").unwrap().1 = vec![128, 32, 3, 3];
    match torchvision::spec_for("resnet18", &zeros(&layout)) {
        Err(Error::ArchitectureMismatch { reason, .. }) => {
            assert!(reason.contains("layer2.0.conv1.weight"), "{reason}")
        }
        other => panic!("expected ArchitectureMismatch, got {other:?}"),
    }
    assert!(
        matches!(torchvision::spec_for("inception_v3", &zeros_of("alexnet")), Err(Error::UnknownArchitecture(a)) if a == "inception_v3")
    );
}

fn unknown_layout(state: &StateDict) -> (String, String) {
    match torchvision::recognise(state) {
        Err(Error::UnknownLayout { tried, unmatched }) => (tried, unmatched),
        other => panic!("expected UnknownLayout, got {:?}", other.map(|(a, _)| a)),
    }
}

#[test]
fn stray_tensors_are_named() {
    let mut layout = layout("resnet18");
    layout.push(("head.extra.weight".into(), vec![10, 512]));
    layout.push(("aux.bias".into(), vec![10]));
    let (tried, unmatched) = unknown_layout(&zeros(&layout));
    assert!(tried.contains("closest: resnet18"), "{tried}");
    assert!(
        tried.contains("vgg16_bn") && tried.contains("mobilenet_v2") && tried.contains("alexnet"),
        "{tried}"
    );
    assert_eq!(unmatched, "aux.bias, head.extra.weight");
    let message = Error::UnknownLayout { tried, unmatched }.to_string();
    assert!(message.contains("--arch"), "{message}");

    // A missing tensor and a misshapen one.
    let mut layout = self::layout("resnet34");
    layout.retain(|(n, _)| n != "layer3.1.bn2.running_var");
    layout.iter_mut().find(|(n, _)| n == "fc.weight").unwrap().1 = vec![10, 256];
    let (tried, unmatched) = unknown_layout(&zeros(&layout));
    assert!(tried.contains("closest: resnet34"), "{tried}");
    assert!(
        unmatched.starts_with("fc.weight (shape [10, 256], expected [_, 512])"),
        "{unmatched}"
    );
    assert!(
        unmatched.ends_with("missing from the file: layer3.1.bn2.running_var"),
        "{unmatched}"
    );

    // Nothing torchvision at all: every tensor is listed, sorted, at most 10 and a count.
    let foreign: Vec<(String, Vec<usize>)> = (0..14)
        .map(|i| (format!("encoder.block{i:02}.w"), vec![4, 4]))
        .collect();
    let (_, unmatched) = unknown_layout(&zeros(&foreign));
    let listed = unmatched.split("; missing").next().unwrap();
    assert!(
        listed.starts_with("encoder.block00.w, encoder.block01.w, "),
        "{unmatched}"
    );
    assert!(listed.contains("encoder.block09.w and 4 more"), "{unmatched}");
    assert!(!listed.contains("encoder.block10.w"), "{unmatched}");
}

/// A forward fixture (`layouts/<arch>_forward.safetensors`): its references, the seeded
/// weights and the seeded input its metadata describes.
fn forward_fixture(arch: &str) -> (Refs, StateDict, Tensor) {
    let refs = Refs::load(&fixture(&format!("layouts/{arch}_forward.safetensors")));
    assert_eq!(refs.metadata["arch"], arch);
    let tensors: HashMap<String, Tensor> = seeded_weights::weights_from_metadata(&refs.metadata["weights"])
        .into_iter()
        .map(|(name, shape, values)| (name, Tensor::from_vec(values, shape, &Device::Cpu).unwrap()))
        .collect();
    let state = StateDict::new(tensors, format!("{arch} seeded"));
    let input_entry = format!("[{}]", refs.metadata["input"]);
    let (_, shape, values) = seeded_weights::weights_from_metadata(&input_entry).remove(0);
    let input = Tensor::from_vec(values, shape, &Device::Cpu).unwrap();
    (refs, state, input)
}

// ---------------------------------------------------------------------------------------------
// .pth checkpoints

fn read(name: &str) -> Vec<u8> {
    std::fs::read(fixture(&format!("layouts/{name}"))).unwrap()
}

fn expected_tiny() -> HashMap<String, Tensor> {
    Refs::load(&fixture("layouts/tiny_expected.safetensors")).tensors
}

fn assert_same_tensors(state: &StateDict, expected: &HashMap<String, Tensor>) {
    let mut names: Vec<&str> = state.names().collect();
    names.sort();
    let mut want: Vec<&str> = expected.keys().map(String::as_str).collect();
    want.sort();
    assert_eq!(names, want);
    for (name, t) in expected {
        let ours = state.get(name).unwrap();
        assert_eq!(ours.dims(), t.dims(), "{name}");
        let a = ours.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = t
            .to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(a, b, "{name}");
    }
}

#[test]
fn reads_zip_checkpoint_with_nested_state_dict() {
    let bytes = read("tiny_checkpoint.pth");
    assert!(bytes.len() < 100_000);
    assert!(looks_like_pth(&bytes));
    let state = state_dict_from_pth(&bytes, "tiny_checkpoint.pth", &Device::Cpu).unwrap();
    assert_eq!(state.source(), "tiny_checkpoint.pth");
    // The int64 tensors (bn.num_batches_tracked, extra.index) are dropped; views come out contiguous.
    assert!(!state.contains("bn.num_batches_tracked") && !state.contains("extra.index"));
    assert_eq!(state.shape("extra.transposed"), Some(&[5, 3][..]));
    assert_same_tensors(&state, &expected_tiny());
}

#[test]
fn reads_legacy_checkpoint_and_strips_data_parallel_prefix() {
    let bytes = read("tiny_legacy.pth");
    assert!(looks_like_pth(&bytes) && !bytes.starts_with(b"PK"));
    let state = state_dict_from_pth(&bytes, "tiny_legacy.pth", &Device::Cpu).unwrap();
    assert_same_tensors(&state, &expected_tiny());
}

fn assert_invalid(bytes: &[u8], what: &str) -> String {
    match state_dict_from_pth(bytes, what, &Device::Cpu) {
        Err(Error::InvalidCheckpoint { what: w, reason }) => {
            assert_eq!(w, what);
            assert!(!reason.is_empty());
            reason
        }
        Err(other) => panic!("{what}: expected InvalidCheckpoint, got {other}"),
        Ok(_) => panic!("{what}: expected InvalidCheckpoint, got a state dict"),
    }
}

#[test]
fn bad_checkpoints_are_invalid_not_panics() {
    assert!(assert_invalid(b"", "empty").contains("empty"));
    assert!(assert_invalid(b"hello, world", "text").contains("neither a zip"));
    assert_invalid(br#"{"weights": [1, 2, 3]}"#, "json");
    assert_invalid(
        &std::fs::read(fixture("layouts/tiny_expected.safetensors")).unwrap(),
        "safetensors",
    );
    // A plain pickle of {} (no torch magic number), and the magic number alone.
    assert!(assert_invalid(b"\x80\x02}q\x00.", "pickle").contains("not one written by torch.save"));
    assert_invalid(b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.", "magic only");

    // Every truncation of both files is refused (a cut inside a trailing storage would leave
    // the zip's central directory, and with it the whole archive, unreadable).
    for name in ["tiny_checkpoint.pth", "tiny_legacy.pth"] {
        let bytes = read(name);
        for len in (0..bytes.len()).step_by(7).chain([bytes.len() - 1, bytes.len() / 2]) {
            assert_invalid(&bytes[..len], &format!("{name} cut at {len}"));
        }
    }
    // Entries marked Deflate-compressed (torch.save never writes them): named as unsupported,
    // not as corrupt.
    let mut deflated = read("tiny_checkpoint.pth");
    for at in 0..deflated.len().saturating_sub(12) {
        let method = match &deflated[at..at + 4] {
            b"PK\x03\x04" => at + 8,
            b"PK\x01\x02" => at + 10,
            _ => continue,
        };
        deflated[method..method + 2].copy_from_slice(&8u16.to_le_bytes());
    }
    let err = assert_invalid(&deflated, "deflated");
    assert!(err.contains("compressed (Deflate)"), "{err}");
    // Corrupted bytes anywhere give a result or an error, never a panic.
    for name in ["tiny_checkpoint.pth", "tiny_legacy.pth"] {
        let bytes = read(name);
        for i in (0..bytes.len()).step_by(3) {
            let mut corrupt = bytes.clone();
            corrupt[i] ^= 0x5a;
            let _ = state_dict_from_pth(&corrupt, name, &Device::Cpu);
        }
    }
}

#[test]
fn converts_checkpoint_to_safetensors() {
    let state = state_dict_from_pth(&read("tiny_checkpoint.pth"), "tiny_checkpoint.pth", &Device::Cpu).unwrap();
    let path = std::env::temp_dir().join(format!("candle_xai_convert_{}.safetensors", std::process::id()));
    let metadata = HashMap::from([("source".to_string(), "tiny_checkpoint.pth".to_string())]);
    write_safetensors(&state, &path, Some(metadata)).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    let (back, meta) = StateDict::from_safetensors(&bytes, "converted", &Device::Cpu).unwrap();
    assert_eq!(meta["source"], "tiny_checkpoint.pth");
    let tensors: HashMap<String, Tensor> = state
        .names()
        .map(|n| (n.to_string(), state.get(n).unwrap().clone()))
        .collect();
    assert_same_tensors(&back, &tensors);
}

/// A real checkpoint, when one is at hand (too big to ship): `CANDLE_XAI_PTH=mobilenet_v2-b0353104.pth`
/// and `CANDLE_XAI_PTH_REF=refs.safetensors` holding `input` [N, 3, H, W] and PyTorch's `logits`.
/// Run with `cargo test --release --test engine -- --ignored real_checkpoint`.
#[test]
#[ignore = "needs CANDLE_XAI_PTH and CANDLE_XAI_PTH_REF"]
fn real_checkpoint_matches_pytorch() {
    let var = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: nothing to check"));
    let (pth, reference) = (var("CANDLE_XAI_PTH"), var("CANDLE_XAI_PTH_REF"));
    let state = state_dict_from_pth(&std::fs::read(&pth).unwrap(), &pth, &Device::Cpu).unwrap();
    let model = Model::from_state_dict(&state, None, None, &Device::Cpu).unwrap();
    let refs = Refs::load(std::path::Path::new(&reference));
    let logits = model.predict(&refs.f32("input")).unwrap();
    eprintln!(
        "{pth}: {} tensors, recognised as {}",
        state.names().count(),
        model.architecture()
    );
    assert_close(
        &format!("{} logits", model.architecture()),
        &logits,
        &refs.f32("logits"),
        REL_TOL,
    );
}

/// The graph JSON expresses every family: a layout written out as JSON and read back builds
/// the same graph, which computes bit-identical logits to the recognised model.
#[test]
fn graph_json_expresses_every_family() {
    for arch in [
        "efficientnet_b0",
        "efficientnet_v2_s",
        "mobilenet_v3_small",
        "convnext_tiny",
    ] {
        let tensors = layout(arch)
            .into_iter()
            .map(|(name, shape)| {
                let numel = shape.iter().product();
                let (lo, hi) = if name.ends_with("running_var") {
                    (0.5, 1.5)
                } else {
                    (-0.2, 0.2)
                };
                let values = seeded_weights::seeded_values(&name, numel, lo, hi);
                (name, Tensor::from_vec(values, shape, &Device::Cpu).unwrap())
            })
            .collect();
        let state = StateDict::new(tensors, format!("{arch} seeded"));
        let recognised = Model::from_state_dict(&state, None, None, &Device::Cpu).unwrap();
        let (_, spec) = torchvision::recognise(&state).unwrap();
        let text = spec.to_json();
        let from_json = GraphSpec::from_json(&text).unwrap();
        assert_eq!(from_json, spec, "{arch}: the JSON reads back as written");
        let described = Model::from_state_dict(&state, Some(from_json), None, &Device::Cpu).unwrap();
        let input = Tensor::from_vec(
            seeded_weights::seeded_values("input", 3 * 64 * 64, -2.0, 2.0),
            (1, 3, 64, 64),
            &Device::Cpu,
        )
        .unwrap();
        let (a, b) = (recognised.predict(&input).unwrap(), described.predict(&input).unwrap());
        assert_eq!(a.to_vec2::<f32>().unwrap(), b.to_vec2::<f32>().unwrap(), "{arch}");
    }
    // Vision transformers under each library's names: attention, tokens and position
    // embedding written out as JSON build the same model.
    for arch in [
        "vit_w128_d2_8",
        "timm_deit_w128_d2_distilled_patch8_64",
        "hf_vit_w128_d2_patch8_64",
    ] {
        let refs = Refs::load(&fixture(&format!("{arch}_refs.safetensors")));
        let tensors = seeded_weights::weights_from_metadata(&refs.metadata["weights"])
            .into_iter()
            .map(|(name, shape, values)| (name, Tensor::from_vec(values, shape, &Device::Cpu).unwrap()))
            .collect();
        let state = StateDict::new(tensors, arch);
        let (_, spec) = torchvision::recognise(&state).unwrap();
        let from_json = GraphSpec::from_json(&spec.to_json()).unwrap();
        assert_eq!(from_json, spec, "{arch}: the JSON reads back as written");
        let recognised = Model::from_state_dict(&state, None, None, &Device::Cpu).unwrap();
        let described = Model::from_state_dict(&state, Some(from_json), None, &Device::Cpu).unwrap();
        let input = refs.f32("inputs");
        let (a, b) = (recognised.predict(&input).unwrap(), described.predict(&input).unwrap());
        assert_eq!(a.to_vec2::<f32>().unwrap(), b.to_vec2::<f32>().unwrap(), "{arch}");
    }
}

/// timm's ResNets are torchvision's layout (the same names); its EfficientNets and ConvNeXts
/// are recognised under their own module paths, and compute PyTorch's logits.
#[test]
fn timm_layouts_are_recognised_with_their_module_names() {
    for (arch, expected) in [
        ("timm_resnet18", "resnet18"),
        ("timm_resnet50", "resnet50"),
        ("timm_efficientnet_b0", "timm_efficientnet_b0"),
        ("timm_efficientnet_b3", "timm_efficientnet_b3"),
        ("timm_convnext_tiny", "timm_convnext_tiny"),
        ("timm_convnext_small", "timm_convnext_small"),
    ] {
        let state = zeros_of(arch);
        let (name, spec) = torchvision::recognise(&state).unwrap_or_else(|e| panic!("{arch}: {e}"));
        assert_eq!(name, expected);
        assert_eq!(torchvision::spec_for(&name, &state).unwrap(), spec, "{arch}");
        let model = Model::from_state_dict(&state, None, None, &Device::Cpu).unwrap_or_else(|e| panic!("{arch}: {e}"));
        assert_eq!(model.num_classes(), Some(10), "{arch}");
        let names: Vec<&str> = spec.nodes.iter().map(|n| n.name.as_str()).collect();
        let expected_names: &[&str] = match expected {
            "timm_efficientnet_b0" => &[
                "conv_stem",
                "bn1.bn",
                "bn1.act",
                "blocks.0.0.conv_dw",
                "blocks.0.0.se.conv_reduce",
                "blocks.1.0.conv_pwl",
                "conv_head",
                "bn2.act",
                "classifier",
            ],
            "timm_convnext_tiny" => &[
                "stem.0",
                "stem.1",
                "stages.0.blocks.0.conv_dw",
                "stages.0.blocks.0.mlp.fc1",
                "stages.0.blocks.0.gamma",
                "stages.1.downsample.1",
                "head.norm",
                "head.fc",
            ],
            _ => &[],
        };
        for wanted in expected_names {
            assert!(names.contains(wanted), "{arch}: no layer `{wanted}` in {names:?}");
        }
        let cam = spec.default_cam_layer.as_deref().unwrap();
        assert!(
            model.graph().node(model.default_cam_layer().unwrap()).answers_to(cam),
            "{arch}"
        );
        if expected == "timm_efficientnet_b0" {
            // A BatchNormAct2d's name is its output: the activation's.
            let graph = model.graph();
            assert_eq!(graph.find("bn2").unwrap(), graph.find("bn2.act").unwrap());
            assert_eq!(
                graph.find("blocks.1.0.bn1").unwrap(),
                graph.find("blocks.1.0.bn1.act").unwrap()
            );
        }
    }
    for arch in ["timm_resnet50", "timm_efficientnet_b0", "timm_convnext_tiny"] {
        let (refs, state, input) = forward_fixture(arch);
        let model = Model::from_state_dict(&state, None, None, &Device::Cpu).unwrap();
        let logits = model.predict(&input).unwrap();
        assert_close(&format!("{arch} logits"), &logits, &refs.f32("logits"), REL_TOL);
    }
}

/// The published vision transformers, recognised from their seeded state dicts under
/// torchvision's, timm's and Hugging Face's names, against PyTorch's float64 logits
/// (scripts/make_vit_layout_fixtures.py): heads of width 64 (ViT-H: 16 of 80), the distilled
/// DeiT's two heads, patch sizes 14, 16 and 32.
#[test]
fn vision_transformers_match_pytorch() {
    let _one_at_a_time = LARGEST_MODELS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    for arch in [
        "vit_b_16",
        "vit_b_32",
        "vit_l_16",
        "vit_l_32",
        "vit_h_14",
        "timm_deit_tiny_distilled_patch16_224",
        "timm_vit_small_patch16_224",
        "timm_vit_base_patch32_224",
        "hf_vit_base_patch16_224",
    ] {
        let (refs, state, input) = forward_fixture(arch);
        let model = Model::from_state_dict(&state, None, None, &Device::Cpu).unwrap_or_else(|e| panic!("{arch}: {e}"));
        assert_eq!(model.architecture(), arch);
        assert_eq!(model.input_size(), Some(input.dims()[2]), "{arch}");
        let logits = model.predict(&input).unwrap();
        assert_close(&format!("{arch} logits"), &logits, &refs.f32("logits"), REL_TOL);
    }
}
