//! The parity harness: one model of a reference suite on one device, every method compared
//! with the captum/zennit tensors of its fixture.
//!
//! A suite ([`Suite`]) says how a model and its references load and which fixture rows may
//! legitimately differ more; [`parity_tests!`] names its models and makes one test per model and
//! device (`torchvision_parity::resnet18::wgpu`); each runs the suite's checks on a [`Case`].
//! A case records every mismatch and carries on, so one run lists them all, and at the end
//! it requires that every reference tensor of the fixture was compared (except those the
//! suite declares are not results, and on a GPU those it declares CPU-only).

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::panic::{catch_unwind, AssertUnwindSafe};

use candle_core::{Device as CpuDevice, Tensor};
use candle_xai::lrp::{Composite, MergeConvention};
use candle_xai::methods::*;
use candle_xai::{Device, Model};

use super::{max_abs_diff, Refs, PATH_TOL, REL_TOL};

/// A set of reference fixtures made the same way.
pub struct Suite {
    /// The model on the CPU, with its references.
    pub load: fn(&str) -> (Model, Refs),
    /// Rows of every fixture input that may differ up to [`Suite::lenient_tol`] (see its use).
    pub lenient_rows: &'static [usize],
    pub lenient_tol: f32,
    /// Fixture tensors that are inputs or notes, not results to compare.
    pub not_results: &'static [&'static str],
    /// References checked on the CPU only, each with its companions (`<key>_alphas`,
    /// `<key>_delta`, ...): on a GPU these variants would repeat the passes of one that is
    /// checked there, differing from it only in host-side arithmetic.
    pub cpu_only: &'static [&'static str],
    /// On a GPU, only the first rows of each input and result: a software adapter runs a
    /// full-size model's passes ~100 times slower than the CPU, and every kernel's batch
    /// indexing is checked elsewhere (the backend suite, the MNIST batches).
    pub gpu_rows: Option<usize>,
}

/// Runs `check` on `model` of `suite` on `device` and fails with every mismatch found.
pub fn run(suite: &Suite, model: &str, device: &Device, check: fn(&Case)) {
    let started = std::time::Instant::now();
    let (cpu, refs) = (suite.load)(model);
    let on_gpu = !matches!(device, Device::Candle(candle_core::Device::Cpu));
    let refs = match suite.gpu_rows {
        Some(rows) if on_gpu => refs.first_rows(rows),
        _ => refs,
    };
    let model_on_device = cpu.to_device(device).unwrap();
    let case = Case {
        suite,
        name: model,
        model: model_on_device,
        refs,
        failures: RefCell::default(),
        compared: RefCell::default(),
    };
    case.attempt("logits", || {
        let logits = case.model.predict(&case.refs.f32("inputs")).unwrap();
        case.compare("logits", &logits, REL_TOL);
    });
    check(&case);
    println!("{model} on {device:?}: {:.1} s", started.elapsed().as_secs_f64());
    case.finish(device);
}

/// One model of a suite on one device.
pub struct Case<'a> {
    suite: &'a Suite,
    pub name: &'a str,
    pub model: Model,
    pub refs: Refs,
    failures: RefCell<Vec<String>>,
    compared: RefCell<BTreeSet<String>>,
}

impl Case<'_> {
    /// Whether the model runs on a GPU backend (where CPU-only variants are left out).
    pub fn on_gpu(&self) -> bool {
        !matches!(self.model.device(), Device::Candle(candle_core::Device::Cpu))
    }

    /// Whether the reference `key` is left to the CPU on this device ([`Suite::cpu_only`]):
    /// the checks of such a key return at once.
    pub fn cpu_only(&self, key: &str) -> bool {
        self.on_gpu()
            && self.suite.cpu_only.iter().any(|skipped| {
                key.strip_prefix(skipped)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('_'))
            })
    }

    /// Explains the fixture's `inputs` for its `targets` with `method`, at the input or `layer`.
    pub fn explain(&self, method: Method, layer: Option<&str>) -> Explanation {
        super::explain_refs(&self.model, &self.refs, method, layer)
    }

    /// The fixture's string metadata `key`.
    pub fn meta(&self, key: &str) -> &str {
        self.refs
            .metadata
            .get(key)
            .unwrap_or_else(|| panic!("{}: fixture has no metadata `{key}`", self.name))
    }

    /// Runs `f`, recording a panic inside it as a failure of `what` instead of stopping the case.
    pub fn attempt(&self, what: &str, f: impl FnOnce()) {
        if let Err(panic) = catch_unwind(AssertUnwindSafe(f)) {
            let message = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)");
            self.fail(format!("{what}: {message}"));
        }
    }

    fn fail(&self, message: String) {
        self.failures.borrow_mut().push(message);
    }

    fn mark(&self, key: &str) {
        self.compared.borrow_mut().insert(key.to_string());
    }

    /// `ours` against the reference `key`, row by row: max |ours - ref| over each row, relative
    /// to max |ref| over the whole tensor (a row may legitimately be all zeros, e.g. a ReLU'd
    /// Grad-CAM of a class the image shows no evidence for), must be at most `tol`, or the
    /// suite's lenient tolerance on its lenient rows.
    pub fn compare(&self, key: &str, ours: &Tensor, tol: f32) {
        if self.refs.tensors.contains_key(&format!("{key}_f64")) {
            return self.compare_conditioned(key, ours, tol);
        }
        self.mark(key);
        let reference = self.refs.get(key);
        let scale = self.refs.scale(key);
        let ours = ours.to_device(&CpuDevice::Cpu).unwrap();
        assert_eq!(ours.dims(), reference.dims(), "{key}: shapes differ");
        let rows: Vec<f32> = if reference.rank() < 2 {
            vec![max_abs_diff(&ours, reference) / scale]
        } else {
            (0..reference.dim(0).unwrap())
                .map(|r| max_abs_diff(&ours.get(r).unwrap(), &reference.get(r).unwrap()) / scale)
                .collect()
        };
        let shown: Vec<String> = rows.iter().map(|e| format!("{e:.2e}")).collect();
        println!("{} {key}: [{}] (tol {tol:.0e})", self.name, shown.join(", "));
        for (row, &err) in rows.iter().enumerate() {
            let allowed = if reference.rank() >= 2 {
                self.row_tol(row, tol)
            } else {
                tol
            };
            if err.is_nan() || err > allowed {
                self.fail(format!(
                    "{key}: row {row} max |ours - ref| / max |ref| = {err:.3e} > {allowed:.0e}"
                ));
            }
        }
    }

    /// `tol`, or the suite's lenient tolerance where larger on its lenient rows.
    fn row_tol(&self, row: usize, tol: f32) -> f32 {
        if self.suite.lenient_rows.contains(&row) {
            tol.max(self.suite.lenient_tol)
        } else {
            tol
        }
    }

    /// Where float32 itself is ill-conditioned the fixture also holds the float64 truth
    /// (`<key>_f64`): ours must be within twice the peer's own float32 distance from it (or
    /// within `tol` of its scale), over the whole tensor. Both are float32 roundings of an
    /// ill-conditioned quantity, so which of the two lands closer is chance (measured: ours
    /// 0.6-1.7x the peer's); twice is the margin the path methods get ([`Case::path_tol`]).
    fn compare_conditioned(&self, key: &str, ours: &Tensor, tol: f32) {
        let truth_key = format!("{key}_f64");
        self.mark(key);
        self.mark(&truth_key);
        let truth = self.refs.get(&truth_key);
        let ours = ours.to_device(&CpuDevice::Cpu).unwrap();
        assert_eq!(ours.dims(), truth.dims(), "{key}: shapes differ");
        let (ours_error, peer_error) = (max_abs_diff(&ours, truth), max_abs_diff(self.refs.get(key), truth));
        let scale = crate::common::max_abs(truth);
        let allowed = (2.0 * peer_error).max(tol * scale);
        println!(
            "{} {key}: float64 truth, max |ours - truth| {ours_error:.2e}, the peer's {peer_error:.2e} (scale {scale:.2e})",
            self.name
        );
        if ours_error.is_nan() || ours_error > allowed {
            self.fail(format!(
                "{key}: max |ours - float64 truth| = {ours_error:.3e} > {allowed:.3e}, twice the peer's own float32 error or {tol:.0e} of max |truth|"
            ));
        }
    }

    /// [`Case::compare`] of `method`'s attributions (at `layer`) with the reference `key`.
    pub fn check(&self, key: &str, method: Method, layer: Option<&str>, tol: f32) -> Option<Explanation> {
        if self.cpu_only(key) {
            return None;
        }
        let mut out = None;
        self.attempt(key, || {
            let started = std::time::Instant::now();
            let explanation = self.explain(method, layer);
            println!(
                "{} {key}: explained in {:.2} s",
                self.name,
                started.elapsed().as_secs_f64()
            );
            self.compare(key, &explanation.attributions, tol);
            out = Some(explanation);
        });
        out
    }

    /// The tolerance of a path method's reference `key`: [`PATH_TOL`], or twice the
    /// reference's own float32 error where the fixture measured it (`f64_rel_err`: captum's
    /// float32 result against the same computation in float64) and found it larger.
    pub fn path_tol(&self, key: &str) -> f32 {
        self.conditioned_tol(key, PATH_TOL)
    }

    /// `floor`, or twice the reference's own measured float32 error where that is larger.
    pub fn conditioned_tol(&self, key: &str, floor: f32) -> f32 {
        let Some(measured) = self.refs.metadata.get("f64_rel_err") else {
            return floor;
        };
        let measured: serde_json::Value = serde_json::from_str(measured).unwrap();
        let worst = match &measured[key] {
            serde_json::Value::Array(rows) => rows.iter().filter_map(|v| v.as_f64()).fold(0.0, f64::max),
            _ => 0.0,
        };
        floor.max(2.0 * worst as f32)
    }

    /// A convergence delta against the reference `key`: a difference of near-equal sums, so
    /// compared with the logits' scale, within PATH_TOL of it or twice the reference's own
    /// float32 error (measured relative to the delta, converted to the logits' scale), and on
    /// the suite's lenient rows within its lenient tolerance: there one path point's ReLU
    /// input within rounding of its kink repeats over a whole flat region (MobileNetV2's
    /// Riemann-middle delta of the flat row moved by 2.2e-2 = 4.8e-3 of max |logit| when our
    /// convolutions' rounding changed, to 2.1e-2 from the float64 value, captum's 9e-4; its
    /// Gauss-Legendre delta of the smooth row is 4.7e-4 from float64 and captum's 3.0e-2).
    pub fn compare_delta(&self, key: &str, delta: Option<&Tensor>) {
        self.mark(key);
        let Some(delta) = delta else {
            return self.fail(format!("{key}: no convergence delta"));
        };
        let scale = self.refs.scale("logits");
        let own_error = self.conditioned_tol(key, 0.0) * self.refs.scale(key);
        let tol = PATH_TOL.max(own_error / scale);
        let ours = delta.to_device(&CpuDevice::Cpu).unwrap().to_vec1::<f32>().unwrap();
        let reference = self.refs.get(key).to_vec1::<f32>().unwrap();
        assert_eq!(ours.len(), reference.len(), "{key}: one delta per row");
        let rows: Vec<f32> = ours
            .iter()
            .zip(&reference)
            .map(|(o, r)| (o - r).abs() / scale)
            .collect();
        let shown: Vec<String> = rows.iter().map(|e| format!("{e:.2e}")).collect();
        println!(
            "{} {key}: [{}] of max |logit| (tol {tol:.0e})",
            self.name,
            shown.join(", ")
        );
        for (row, &err) in rows.iter().enumerate() {
            let allowed = self.row_tol(row, tol);
            if err.is_nan() || err > allowed {
                self.fail(format!(
                    "{key}: row {row} differs by {err:.3e} of max |logit| {scale:.3e} > {allowed:.0e}"
                ));
            }
        }
    }

    /// Saliency (signed and absolute) and Input × Gradient.
    pub fn check_gradients(&self, layer: Option<&str>) {
        let (saliency, ixg) = match layer {
            None => ("saliency", "input_x_gradient"),
            Some(_) => ("layer_gradient", "layer_gxa"),
        };
        self.check(
            saliency,
            Method::Gradient(GradientParams { abs: false }),
            layer,
            REL_TOL,
        );
        if layer.is_none() {
            self.check(
                "saliency_abs",
                Method::Gradient(GradientParams { abs: true }),
                None,
                REL_TOL,
            );
        }
        self.check(ixg, Method::InputXGradient, layer, REL_TOL);
    }

    /// Integrated Gradients with `quadrature`, its number of steps read from the fixture's
    /// alphas: the quadrature points, the attributions and the convergence delta.
    pub fn check_integrated_gradients(&self, quadrature: Quadrature, batch_size: Option<usize>) {
        let key = format!("ig_{}", quadrature.name().replace('-', "_"));
        if self.cpu_only(&key) {
            return;
        }
        let n_steps = self.refs.get(&format!("{key}_alphas")).dim(0).unwrap();
        // Gauss-Legendre points are captum's to f64 precision; the Riemann alphas are
        // torch.linspace float32 values, whose last bit depends on the CPU's vector width
        // (AVX2 vs AVX-512), so they agree to float32 precision.
        let (steps, alphas) = quadrature.points(n_steps);
        let host = |v: Vec<f64>| Tensor::new(v, &CpuDevice::Cpu).unwrap();
        self.attempt(&key, || {
            self.compare(&format!("{key}_alphas"), &host(alphas), 1e-6);
            self.compare(&format!("{key}_step_sizes"), &host(steps), 1e-12);
        });
        let params = IntegratedGradientsParams {
            n_steps,
            quadrature,
            batch_size,
            ..Default::default()
        };
        let tol = self.path_tol(&key);
        if let Some(out) = self.check(&key, Method::IntegratedGradients(params), None, tol) {
            self.compare_delta(&format!("{key}_delta"), out.convergence_delta.as_ref());
        }
    }

    /// SmoothGrad with captum's own noise (the fixture's `smoothgrad_noise`).
    pub fn check_smoothgrad(&self, aggregate: Aggregate, key: &str, batch_size: Option<usize>) {
        if self.cpu_only(key) {
            return;
        }
        self.attempt(key, || {
            let p = self.refs.get("smoothgrad_params").to_vec1::<f64>().unwrap();
            self.mark("smoothgrad_params");
            self.mark("smoothgrad_noise");
            let params = SmoothGradParams {
                n_samples: p[0] as usize,
                stdev: Some(p[1]),
                noise: Some(self.refs.f32("smoothgrad_noise")),
                aggregate,
                batch_size,
                ..Default::default()
            };
            self.check(key, Method::SmoothGrad(params), None, self.path_tol(key));
        });
    }

    /// Grad-CAM at `layer` (the model's default layer when None).
    pub fn check_grad_cam(&self, key: &str, relu: bool, upsample: bool, layer: Option<&str>) {
        self.check(key, Method::GradCam(GradCamParams { relu, upsample }), layer, REL_TOL);
    }

    /// LRP with `composite` against zennit 0.5.1, whose BatchNorm merge keeps its eps
    /// ([`MergeConvention::KeepEps`], to [`REL_TOL`]). zennit 1.0's exact merge differs from it
    /// by the sqrt(1 + eps) factors only, so [`MergeConvention::Exact`] is held to 1e-3.
    pub fn check_lrp(&self, composite: Composite, key: &str, layer: Option<&str>, merge: MergeConvention) {
        let mut params = LrpParams::new(composite);
        params.merge_convention = merge;
        // Relevance through many near-cancelling sums (DenseNet's concatenations, ConvNeXt's
        // LayerNorms) is ill-conditioned in float32 too: twice the fixture's own measured
        // float32 error where that exceeds the tolerance.
        let tol = match merge {
            MergeConvention::KeepEps => self.conditioned_tol(key, REL_TOL),
            MergeConvention::Exact => 1e-3,
        };
        self.check(key, Method::Lrp(params), layer, tol);
    }

    /// Reports every failure, and any reference tensor no check compared.
    fn finish(&self, device: &Device) {
        let compared = self.compared.borrow();
        let mut unchecked: Vec<&str> = self
            .refs
            .tensors
            .keys()
            .map(String::as_str)
            .filter(|k| !compared.contains(*k) && !self.suite.not_results.contains(k) && !self.cpu_only(k))
            .collect();
        unchecked.sort();
        let mut failures = self.failures.borrow_mut();
        if !unchecked.is_empty() {
            failures.push(format!("references no check compared: {}", unchecked.join(", ")));
        }
        assert!(
            failures.is_empty(),
            "{} on {device:?}: {} failure(s):\n  {}",
            self.name,
            failures.len(),
            failures.join("\n  ")
        );
    }
}

/// One test per model and device of `$suite`, each running `$check` (a `fn(&Case)`):
/// `mod resnet18 { #[test] fn cpu(); #[test] fn wgpu(); }` (and `cuda` with that feature).
// Other test binaries include `common` without running a parity suite.
#[allow(unused_macros)]
macro_rules! parity_tests {
    ($suite:expr, $check:expr; $($model:ident),+ $(,)?) => {
        $(
            mod $model {
                use super::*;

                #[test]
                fn cpu() {
                    $crate::common::parity::run(&$suite, stringify!($model), &candle_xai::Device::cpu(), $check);
                }

                #[cfg(feature = "wgpu")]
                #[test]
                fn wgpu() {
                    let device = candle_xai::Device::Wgpu($crate::common::wgpu_device());
                    $crate::common::parity::run(&$suite, stringify!($model), &device, $check);
                }

                #[cfg(feature = "cuda")]
                #[test]
                fn cuda() {
                    $crate::common::parity::run(&$suite, stringify!($model), &$crate::common::cuda_device(), $check);
                }
            }
        )+
    };
}
#[allow(unused_imports)]
pub(crate) use parity_tests;
