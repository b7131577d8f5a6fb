//! Parity with pnpxai 0.1.4's metric classes (`tests/fixtures/metrics/`, made by
//! `scripts/make_metric_fixtures.py`, which replays our seeded random draws inside pnpxai): every
//! reference value of a fixture is recomputed and compared, on the three MNIST models and
//! torchvision's ResNet-18, on the CPU; on wgpu the MNIST ResNet (every metric runs its perturbed
//! inputs through the backend's forward; the rest is host arithmetic checked on the CPU).
//!
//! Tolerance: |ours - pnpxai| <= 1e-4 * max(1, |pnpxai|). The probabilities behind pixel
//! flipping and the logits behind MuFidelity differ from PyTorch's by float32 rounding only;
//! MuFidelity and Complexity are rank and count statistics, equal unless a value sits within
//! rounding of a neighbour or a bin edge.

use std::collections::BTreeSet;

use candle_core::{DType, Tensor};
use candle_xai::metrics::{evaluate, EvaluationRequest, Metric, Pooling};
use candle_xai::{Device, Method, Model, Progress, Request, Targets};
use serde_json::json;

use crate::common::{fixture, Refs};

const TOL: f64 = 1e-4;

/// What one reference tensor holds: the metric (with its parameters), the attribution it scores
/// and, for curves, which one.
struct Reference {
    metric: Metric,
    attribution: String,
    /// Sensitivity's method.
    method: Option<Method>,
    curve: Option<&'static str>,
}

/// Reads a reference tensor's name (`abpc_gradient`, `morf_curve_ties`, `mu_fidelity_gradient_g7`,
/// `sensitivity_input_x_gradient_seed7`, ...) as what it was computed with.
fn reference(name: &str, kinds: &[String]) -> Option<Reference> {
    if is_diagnostic(name) {
        return None;
    }
    let (name, seed) = match name.strip_suffix("_seed7") {
        Some(rest) => (rest, 7),
        None => (name, 0),
    };
    let (metric_name, rest) = ["mu_fidelity", "sensitivity", "complexity", "abpc", "morf", "lerf"]
        .into_iter()
        .find_map(|m| name.strip_prefix(m).and_then(|r| r.strip_prefix('_')).map(|r| (m, r)))?;
    let (curve, rest) = match rest.strip_prefix("curve_") {
        Some(r) => (Some(if metric_name == "morf" { "morf" } else { "lerf" }), r),
        None => (None, rest),
    };
    let (kind, variant) = match rest {
        r if r.ends_with("_steps7") => (r.trim_end_matches("_steps7"), Some("steps7")),
        r if r.ends_with("_g7") => (r.trim_end_matches("_g7"), Some("g7")),
        r => (r, None),
    };
    let mut overrides = json!({});
    match (metric_name, variant) {
        (_, Some("steps7")) => overrides["n_steps"] = json!(7),
        (_, Some("g7")) => overrides = json!({"grid_size": 7, "noise_scale": 0.3, "n_perturb": 40}),
        _ => {}
    }
    if matches!(metric_name, "mu_fidelity" | "sensitivity") {
        overrides["seed"] = json!(seed);
    }
    let metric = Metric::from_json(metric_name, &overrides).unwrap();
    let (attribution, method) = match metric_name {
        "sensitivity" => (
            kind.to_string(),
            Some(Method::from_name(&kind.replace('_', "-")).unwrap()),
        ),
        _ => {
            assert!(kinds.iter().any(|k| k == kind), "{name}: no attribution attr_{kind}");
            (kind.to_string(), None)
        }
    };
    Some(Reference {
        metric,
        attribution,
        method,
        curve,
    })
}

/// The references that score one attribution with one method: ((attribution, method name),
/// [(reference key, what it holds)]).
type Group = ((String, Option<String>), Vec<(String, Reference)>);

/// MuFidelity's intermediates that the fixture keeps for debugging (its per-perturbation score
/// drops and reset attribution sums, the input's std and mean): not results.
fn is_diagnostic(name: &str) -> bool {
    ["_masked_attr", "_pred_diff", "_std_mean"]
        .iter()
        .any(|s| name.ends_with(s))
}

/// Compares every reference of `refs` (those `keep` accepts; the rest must be declared left
/// out by the caller) with ours. References that score the same attributions with the same
/// method are evaluated in one request, so pixel-flipping metrics share their curves.
fn check(model: &Model, refs: &Refs, name: &str, keep: fn(&str) -> bool) {
    let inputs = refs.f32("inputs");
    let targets = refs.targets();
    let kinds: Vec<String> = refs
        .tensors
        .keys()
        .filter_map(|k| k.strip_prefix("attr_").map(String::from))
        .collect();
    let mut groups: Vec<Group> = Vec::new();
    let mut keys: Vec<&String> = refs.tensors.keys().collect();
    keys.sort();
    for key in keys.into_iter().filter(|k| keep(k)) {
        let Some(r) = reference(key, &kinds) else { continue };
        let group = (r.attribution.clone(), r.method.as_ref().map(Method::name));
        match groups.iter_mut().find(|(g, _)| *g == group) {
            Some((_, members)) => members.push((key.clone(), r)),
            None => groups.push((group, vec![(key.clone(), r)])),
        }
    }
    let mut failures = Vec::new();
    let mut compared = BTreeSet::new();
    let mut worst: f64 = 0.0;
    for ((attribution, _), members) in &groups {
        let method = members[0].1.method.clone();
        let attributions = match refs.tensors.get(&format!("attr_{attribution}")) {
            Some(a) => a.to_dtype(DType::F32).unwrap(),
            None => {
                let request = Request {
                    targets: Targets::Classes(targets.clone()),
                    ..Request::new(method.clone().expect("sensitivity names its method"))
                };
                candle_xai::explain(model, &inputs, &request, &mut Progress::none())
                    .unwrap()
                    .attributions
            }
        };
        let request = EvaluationRequest {
            metrics: members.iter().map(|(_, r)| r.metric.clone()).collect(),
            targets: Targets::Classes(targets.clone()),
            explainer: method.map(Request::new),
            memory_limit: None,
            pooling: Pooling::None,
        };
        let scores = evaluate(model, &inputs, &attributions, &request, &mut Progress::none())
            .unwrap()
            .scores;
        for ((key, r), score) in members.iter().zip(scores) {
            let ours: Vec<f64> = match r.curve {
                Some("morf") => score.morf_curves.unwrap().concat(),
                Some(_) => score.lerf_curves.unwrap().concat(),
                None => score.values,
            };
            let expected = &refs.tensors[key];
            let theirs = expected
                .to_dtype(DType::F64)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap();
            assert_eq!(ours.len(), theirs.len(), "{key}: value count");
            for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
                let both_nan = a.is_nan() && b.is_nan();
                let err = (a - b).abs() / b.abs().max(1.0);
                if !both_nan {
                    worst = worst.max(err);
                }
                if !(both_nan || err <= TOL) {
                    failures.push(format!("{key}[{i}]: ours {a}, pnpxai {b}"));
                }
            }
            compared.insert(key.clone());
        }
    }
    let unchecked: Vec<&String> = refs
        .tensors
        .keys()
        .filter(|k| !k.starts_with("attr_") && *k != "inputs" && *k != "targets" && !is_diagnostic(k))
        .filter(|k| keep(k) && !compared.contains(*k))
        .collect();
    println!(
        "{name} on {:?}: {} references, worst relative error {worst:.2e}",
        model.device(),
        compared.len()
    );
    assert!(unchecked.is_empty(), "{name}: references not compared: {unchecked:?}");
    assert!(failures.is_empty(), "{name}:\n{}", failures.join("\n"));
}

/// The fixture `metrics/<file>`, with the tensors it borrows from another fixture
/// (`external_tensors`: name -> "<file>:<tensor>", e.g. resnet18's inputs and saliency).
fn metric_refs(file: &str) -> Refs {
    let mut refs = Refs::load(&fixture(&format!("metrics/{file}")));
    let external: std::collections::HashMap<String, String> =
        serde_json::from_str(refs.metadata.get("external_tensors").map_or("{}", String::as_str)).unwrap();
    for (name, source) in external {
        let (file, tensor) = source.split_once(':').unwrap();
        let borrowed = Refs::load(&fixture(file)).get(tensor).clone();
        refs.tensors.insert(name, borrowed);
    }
    refs
}

fn mnist(name: &str, device: &Device, keep: fn(&str) -> bool) {
    let model = crate::common::mnist_cpu(name).to_device(device).unwrap();
    let refs = metric_refs(&format!("mnist_{name}_metrics.safetensors"));
    check(&model, &refs, name, keep);
}

fn everything(_: &str) -> bool {
    true
}

#[test]
fn mnist_mlp() {
    mnist("mlp", &Device::cpu(), everything);
}

#[test]
fn mnist_vgg() {
    mnist("vgg", &Device::cpu(), everything);
}

#[test]
fn mnist_resnet() {
    mnist("resnet", &Device::cpu(), everything);
}

/// On wgpu, the references that run the backend's forward on perturbed inputs, each kind once:
/// the flipping curves of the signed gradient (AbPC's 18 passes per sample) and MuFidelity's
/// smaller run (40 perturbations); a software adapter takes ~1 s per 40 MNIST ResNet rows, and
/// the other references repeat these passes with other host-side arithmetic.
#[cfg(feature = "wgpu")]
#[test]
fn mnist_resnet_wgpu() {
    let on_gpu = |key: &str| {
        [
            "abpc_gradient",
            "morf_curve_gradient",
            "lerf_curve_gradient",
            "mu_fidelity_gradient_g7",
        ]
        .contains(&key)
    };
    mnist("resnet", &Device::Wgpu(crate::common::wgpu_device()), on_gpu);
}

#[test]
fn resnet18() {
    let (model, _) = super::torchvision_parity::load("resnet18");
    let refs = metric_refs("resnet18_metrics.safetensors");
    check(&model, &refs, "resnet18", everything);
}

/// Input that does not fit, attributions that do not fit the input, a metric that needs the
/// method without one: each refused with a message naming the problem.
#[test]
fn metrics_refuse_what_does_not_fit() {
    let model = crate::common::mnist_cpu("mlp");
    let x = Tensor::zeros((2, 1, 28, 28), DType::F32, &candle_core::Device::Cpu).unwrap();
    let request = |metric: &str| EvaluationRequest {
        metrics: vec![Metric::from_name(metric).unwrap()],
        targets: Targets::TopPrediction,
        explainer: None,
        memory_limit: None,
        pooling: Pooling::None,
    };
    let message = |a: &Tensor, metric: &str| {
        evaluate(&model, &x, a, &request(metric), &mut Progress::none())
            .unwrap_err()
            .to_string()
    };
    let layer = Tensor::zeros((2, 8, 7, 7), DType::F32, &candle_core::Device::Cpu).unwrap();
    assert!(message(&layer, "abpc").contains("does not fit the input [2, 1, 28, 28]"));
    let nan = Tensor::full(f32::NAN, (2, 1, 28, 28), &candle_core::Device::Cpu).unwrap();
    assert!(message(&nan, "morf").contains("only finite attributions"));
    assert!(message(&x, "sensitivity").contains("name the method"));
    let wrong = Metric::from_json("abpc", &json!({"n_steps": 1}))
        .unwrap_err()
        .to_string();
    assert!(wrong.contains("n_steps"), "{wrong}");
    let unknown = Metric::from_json("mu-fidelity", &json!({"n_steps": 3}))
        .unwrap_err()
        .to_string();
    assert!(unknown.contains("is not a parameter of mu-fidelity"), "{unknown}");
}

/// The randomisation sanity check against Quantus 0.6.0's `MPRT` run with our layer order and
/// our random parameters (`metrics/mnist_<m>_randomisation.safetensors`): the similarity after
/// every layer (checkpoints 0), by Spearman and by SSIM, for the signed gradient. Spearman over
/// 784 pixels moves by up to 1.3e-5 from float32 noise alone (one adjacent swap moves it by
/// 2e-5), so the tolerance is 1e-4; SSIM agrees to 1e-7.
fn randomisation(name: &str, device: &Device) {
    let model = crate::common::mnist_cpu(name).to_device(device).unwrap();
    let refs = metric_refs(&format!("mnist_{name}_randomisation.safetensors"));
    let layers: Vec<String> = serde_json::from_str(&refs.metadata["layers"]).unwrap();
    let inputs = refs.f32("inputs");
    let targets = Targets::Classes(refs.targets());
    let explainer = Request {
        targets: targets.clone(),
        ..Request::new(Method::from_name("gradient").unwrap())
    };
    let attributions = candle_xai::explain(&model, &inputs, &explainer, &mut Progress::none())
        .unwrap()
        .attributions;
    for (similarity, tol) in [("spearman", 1e-4), ("ssim", 1e-6)] {
        let metric = Metric::from_json("randomisation", &json!({"similarity": similarity, "checkpoints": 0})).unwrap();
        let request = EvaluationRequest {
            metrics: vec![metric],
            targets: targets.clone(),
            explainer: Some(explainer.clone()),
            memory_limit: None,
            pooling: Pooling::None,
        };
        let score = evaluate(&model, &inputs, &attributions, &request, &mut Progress::none())
            .unwrap()
            .scores
            .remove(0);
        let curve = score.randomisation.unwrap();
        assert_eq!(curve.layers, layers, "{name}: the layers, top down");
        assert_eq!(curve.randomised, (1..=layers.len()).collect::<Vec<_>>());
        let theirs = refs
            .get(&format!("randomisation_{similarity}_curve"))
            .to_dtype(DType::F64)
            .unwrap();
        let theirs = theirs.to_vec2::<f64>().unwrap();
        let last = refs
            .get(&format!("randomisation_{similarity}"))
            .to_dtype(DType::F64)
            .unwrap();
        let mut worst: f64 = 0.0;
        for (ours, theirs) in curve
            .similarity
            .iter()
            .zip(&theirs)
            .chain([(&score.values, &last.to_vec1::<f64>().unwrap())])
        {
            for (a, b) in ours.iter().zip(theirs) {
                worst = worst.max((a - b).abs());
            }
        }
        println!("{name} randomisation ({similarity}) on {device:?}: worst difference {worst:.1e}");
        assert!(worst <= tol, "{name}: {similarity} differs from Quantus by {worst}");
    }
}

#[test]
fn randomisation_mlp() {
    randomisation("mlp", &Device::cpu());
}

#[test]
fn randomisation_vgg() {
    randomisation("vgg", &Device::cpu());
}

#[test]
fn randomisation_resnet() {
    randomisation("resnet", &Device::cpu());
}

/// On wgpu: the randomised parameters are uploaded with the graph and the explanations of the
/// randomised models run there.
#[cfg(feature = "wgpu")]
#[test]
fn randomisation_vgg_wgpu() {
    randomisation("vgg", &Device::Wgpu(crate::common::wgpu_device()));
}

/// `pooling` is applied before scoring: ResNet-18's Input x Gradient ([N, 3, H, W]) scored with
/// pooling `sumpos` equals the same attributions pooled by hand ([N, H, W]) scored as given;
/// and the pooling changes the scores (it is not ignored).
#[test]
fn pooling_is_applied_before_scoring() {
    let (model, refs) = super::torchvision_parity::load("resnet18");
    let inputs = refs.f32("inputs");
    let targets = Targets::Classes(refs.targets());
    let explainer = Request {
        targets: targets.clone(),
        ..Request::new(Method::InputXGradient)
    };
    let attributions = candle_xai::explain(&model, &inputs, &explainer, &mut Progress::none())
        .unwrap()
        .attributions;
    let score = |a: &Tensor, pooling: Pooling| -> Vec<f64> {
        let request = EvaluationRequest {
            metrics: vec![
                Metric::from_name("abpc").unwrap(),
                Metric::from_name("complexity").unwrap(),
            ],
            targets: targets.clone(),
            explainer: Some(explainer.clone()),
            memory_limit: None,
            pooling,
        };
        let scores = evaluate(&model, &inputs, a, &request, &mut Progress::none())
            .unwrap()
            .scores;
        scores.into_iter().flat_map(|s| s.values).collect()
    };
    let (n, c, h, w) = attributions.dims4().unwrap();
    let values = attributions.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let by_hand = Tensor::from_vec(
        Pooling::Sumpos.apply(&values, n, c),
        (n, h, w),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let pooled = score(&attributions, Pooling::Sumpos);
    assert_eq!(pooled, score(&by_hand, Pooling::None));
    assert_ne!(pooled, score(&attributions, Pooling::None));
}

/// Complexity with the targets given skips the model's clean forward (it never reads the model)
/// and scores as it does beside a metric that needs that forward; a target out of range is
/// still refused without it.
#[test]
fn complexity_alone_skips_the_clean_forward() {
    let model = crate::common::mnist_cpu("mlp");
    let refs = Refs::load(&crate::common::mnist_fixture("mlp_refs.safetensors"));
    let (inputs, attributions) = (refs.f32("inputs"), refs.f32("saliency"));
    let score = |metrics: &[&str], targets: Vec<i64>| {
        let request = EvaluationRequest {
            metrics: metrics.iter().map(|m| Metric::from_name(m).unwrap()).collect(),
            targets: Targets::Classes(targets),
            explainer: None,
            memory_limit: None,
            pooling: Pooling::None,
        };
        evaluate(&model, &inputs, &attributions, &request, &mut Progress::none())
    };
    let alone = score(&["complexity"], refs.targets()).unwrap().scores;
    let beside = score(&["complexity", "morf"], refs.targets()).unwrap().scores;
    assert_eq!(alone[0].values, beside[0].values);
    let err = score(&["complexity"], vec![10]).unwrap_err().to_string();
    assert!(err.contains("target class 10 is out of range"), "{err}");
}
