//! Shared test helpers: reference fixtures, the devices compiled in, and the tolerance check.
#![allow(dead_code)]

pub mod parity;
pub mod seeded_weights;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

/// Every parity test compares with this: max |ours - ref| <= REL_TOL * max |ref|.
pub const REL_TOL: f32 = 1e-4;

/// Integrated Gradients and SmoothGrad sum gradients over many path points or noisy copies.
/// At a few of them a ReLU input lies within float32 rounding of its kink, and whether it
/// flips depends on summation order (gemm blocking, im2col vs oneDNN): recomputing captum's
/// own references in float64 moves them by up to 9e-3 (torchvision fixtures' `f64_rel_err`).
/// Where no point flips we agree to ~1e-6; single flips seen move a result by up to 1.2e-3.
/// Direct methods (gradient, Grad-CAM, LRP, layer gradients) keep REL_TOL.
pub const PATH_TOL: f32 = 2e-3;

pub fn fixture(path: &str) -> PathBuf {
    repository_root().join("tests/fixtures").join(path)
}

/// The checkout the fixtures are read from: where this binary was built, unless
/// `CANDLE_XAI_ROOT` names another (scripts/test-gpu.sh runs the test binaries on a GPU machine,
/// where the checkout lives elsewhere and there is no Rust toolchain).
pub fn repository_root() -> PathBuf {
    std::env::var_os("CANDLE_XAI_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// The `candle-xai` binary the CLI tests run: the one built with them, unless
/// `CANDLE_XAI_BIN` names another (as for repository_root).
pub fn cli_binary() -> PathBuf {
    std::env::var_os("CANDLE_XAI_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_candle-xai")))
}

/// A file of the MNIST fixtures (`tests/fixtures/mnist/`).
pub fn mnist_fixture(name: &str) -> PathBuf {
    fixture(&format!("mnist/{name}"))
}

/// The devices this build can run on: CPU; CUDA when the `cuda` feature is on; the wgpu
/// adapter (Mesa's lavapipe where there is no GPU) when the `wgpu` feature is on. A missing
/// device fails the test rather than skipping it.
#[allow(unused_mut)]
pub fn devices() -> Vec<candle_xai::Device> {
    let mut devices = vec![candle_xai::Device::cpu()];
    #[cfg(feature = "cuda")]
    devices.push(cuda_device());
    #[cfg(feature = "wgpu")]
    devices.push(candle_xai::Device::Wgpu(wgpu_device()));
    devices
}

/// CUDA device 0; built with the `cuda` feature, a machine without one fails the test.
#[cfg(feature = "cuda")]
pub fn cuda_device() -> candle_xai::Device {
    Device::new_cuda(0)
        .expect("built with the cuda feature but no CUDA device")
        .into()
}

/// One wgpu device per test process: adapters are slow to open on software Vulkan.
#[cfg(feature = "wgpu")]
pub fn wgpu_device() -> candle_xai::backend::wgpu::WgpuDevice {
    static DEVICE: std::sync::OnceLock<candle_xai::backend::wgpu::WgpuDevice> = std::sync::OnceLock::new();
    DEVICE
        .get_or_init(|| {
            candle_xai::backend::wgpu::WgpuDevice::new().unwrap_or_else(|e| {
                panic!("the wgpu backend needs an adapter ({e}); without a GPU install mesa-vulkan-drivers")
            })
        })
        .clone()
}

pub struct Refs {
    pub tensors: HashMap<String, Tensor>,
    pub metadata: HashMap<String, String>,
    /// max |t| of the tensors [`Refs::first_rows`] cut, over all their rows.
    full_scales: HashMap<String, f32>,
}

impl Refs {
    pub fn load(path: &Path) -> Refs {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let metadata = header.metadata().clone().unwrap_or_default();
        let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).unwrap();
        Refs {
            tensors,
            metadata,
            full_scales: HashMap::new(),
        }
    }

    pub fn get(&self, name: &str) -> &Tensor {
        self.tensors
            .get(name)
            .unwrap_or_else(|| panic!("fixture has no tensor `{name}`"))
    }

    pub fn f32(&self, name: &str) -> Tensor {
        self.get(name).to_dtype(DType::F32).unwrap()
    }

    /// The same references for the first `rows` inputs only: every tensor that is per input
    /// (its first dimension is the batch) cut to those rows. Quadrature points and method
    /// parameters are not per input, whatever their length. Comparisons keep the scale of the
    /// whole tensor ([`Refs::scale`]), so a row is held to what it was held to in the batch.
    pub fn first_rows(mut self, rows: usize) -> Refs {
        let batch = self.get("inputs").dim(0).unwrap();
        let shared = ["_alphas", "_step_sizes", "_params"];
        for (name, tensor) in self.tensors.iter_mut() {
            if tensor.rank() > 0 && tensor.dim(0).unwrap() == batch && !shared.iter().any(|s| name.ends_with(s)) {
                if tensor.dtype().is_float() {
                    let full = tensor.abs().unwrap().flatten_all().unwrap().max(0).unwrap();
                    let full = full.to_dtype(DType::F32).unwrap().to_scalar::<f32>().unwrap();
                    // An all-zero tensor keeps failing max_abs's check in comparisons.
                    if full > 0.0 {
                        self.full_scales.insert(name.clone(), full);
                    }
                }
                *tensor = tensor.narrow(0, 0, rows).unwrap();
            }
        }
        self
    }

    /// max |reference `name`| over all its rows, the scale its comparisons are relative to;
    /// never 0 (a comparison against all zeros would prove nothing).
    pub fn scale(&self, name: &str) -> f32 {
        match self.full_scales.get(name) {
            Some(&scale) => scale,
            None => max_abs(self.get(name)),
        }
    }

    pub fn targets(&self) -> Vec<i64> {
        self.get("targets")
            .to_dtype(DType::I64)
            .unwrap()
            .to_vec1::<i64>()
            .unwrap()
    }
}

/// Max |a - b| relative to max |b|.
pub fn relative_error(ours: &Tensor, reference: &Tensor) -> f32 {
    max_abs_diff(ours, reference) / max_abs(reference)
}

/// max |t|, which must not be 0 (a comparison against all zeros would prove nothing).
pub fn max_abs(t: &Tensor) -> f32 {
    let t = t.to_dtype(DType::F32).unwrap();
    let scale = t
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(
        scale > 0.0,
        "reference is all zeros: the comparison would prove nothing"
    );
    scale
}

pub fn max_abs_diff(ours: &Tensor, reference: &Tensor) -> f32 {
    let ours = ours.to_device(&Device::Cpu).unwrap().to_dtype(DType::F32).unwrap();
    let reference = reference.to_dtype(DType::F32).unwrap();
    assert_eq!(ours.dims(), reference.dims(), "shapes differ");
    (&ours - &reference)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[track_caller]
pub fn assert_close(what: &str, ours: &Tensor, reference: &Tensor, tol: f32) {
    let err = relative_error(ours, reference);
    assert!(
        err <= tol,
        "{what}: max |ours - ref| / max |ref| = {err:.3e} > {tol:.0e}"
    );
}

/// A fresh, empty directory for one test, removed when the test passes.
pub struct Scratch(PathBuf);

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// `<tmp>/candle-xai-tests/<suite>/<test>-<pid>`, created empty.
pub fn scratch(suite: &str, test: &str) -> Scratch {
    let dir = std::env::temp_dir()
        .join("candle-xai-tests")
        .join(suite)
        .join(format!("{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    Scratch(dir)
}

/// A tiny RGB classifier: Conv2d(3,4,3) -> ReLU -> AdaptiveAvgPool2d(1) -> Flatten -> Linear(4,3).
pub fn tiny_rgb_model(dir: &Path) -> (PathBuf, PathBuf) {
    let values =
        |n: usize, phase: f32| -> Vec<f32> { (0..n).map(|i| ((i as f32 + phase) * 0.7).sin() * 0.3).collect() };
    let tensor =
        |n: usize, phase: f32, shape: &[usize]| Tensor::from_vec(values(n, phase), shape, &Device::Cpu).unwrap();
    let weights = HashMap::from([
        ("conv.weight", tensor(4 * 3 * 3 * 3, 0.0, &[4, 3, 3, 3])),
        ("conv.bias", tensor(4, 1.0, &[4])),
        ("fc.weight", tensor(3 * 4, 2.0, &[3, 4])),
        ("fc.bias", tensor(3, 3.0, &[3])),
    ]);
    let model = dir.join("tiny.safetensors");
    candle_core::safetensors::save(&weights, &model).unwrap();
    let graph = dir.join("tiny.graph.json");
    std::fs::write(
        &graph,
        r#"{"input_channels": 3, "nodes": [
            {"name": "conv", "op": "Conv2d", "kernel_size": 3},
            {"name": "relu", "op": "ReLU"},
            {"name": "pool", "op": "AdaptiveAvgPool2d", "output_size": 1},
            {"name": "flatten", "op": "Flatten"},
            {"name": "fc", "op": "Linear"}]}"#,
    )
    .unwrap();
    (model, graph)
}

/// A trained MNIST model of `tests/fixtures/mnist` (`mlp`, `vgg` or `resnet`), on the CPU.
pub fn mnist_cpu(name: &str) -> candle_xai::Model {
    let graph = candle_xai::import::graph_json::GraphSpec::from_json(
        &std::fs::read_to_string(fixture(&format!("mnist/{name}.graph.json"))).unwrap(),
    )
    .unwrap();
    let bytes = std::fs::read(fixture(&format!("mnist/{name}.safetensors"))).unwrap();
    let options = candle_xai::LoadOptions {
        graph: Some(graph),
        ..Default::default()
    };
    candle_xai::Model::from_safetensors(&bytes, name, &options, &candle_core::Device::Cpu).unwrap()
}

/// [`mnist_cpu`] on `device`, with its captum/zennit references.
pub fn mnist_model(name: &str, device: &candle_xai::Device) -> (candle_xai::Model, Refs) {
    let model = mnist_cpu(name).to_device(device).unwrap();
    (model, Refs::load(&fixture(&format!("mnist/{name}_refs.safetensors"))))
}

/// Explains the fixture's `inputs` for its `targets` with `method`, at the input or `layer`.
pub fn explain_refs(
    model: &candle_xai::Model,
    refs: &Refs,
    method: candle_xai::Method,
    layer: Option<&str>,
) -> candle_xai::Explanation {
    let request = candle_xai::Request {
        method,
        targets: candle_xai::Targets::Classes(refs.targets()),
        layer: layer.map(String::from),
        memory_limit: None,
        share: None,
    };
    candle_xai::explain(model, &refs.f32("inputs"), &request, &mut candle_xai::Progress::none()).unwrap()
}
