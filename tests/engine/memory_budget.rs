//! The memory budget: passes are planned from the shapes before anything is allocated, split
//! to fit the budget, and an input that cannot fit is refused with both sizes.

use candle_core::{DType, Device, Tensor};
use candle_xai::methods::{IntegratedGradientsParams, Quadrature};
use candle_xai::{explain, LoadOptions, Method, Model, Progress, Request, Targets};

use crate::common::{mnist_model, relative_error, scratch, tiny_rgb_model};

fn integrated_gradients(n_steps: usize) -> Method {
    Method::IntegratedGradients(IntegratedGradientsParams {
        n_steps,
        quadrature: Quadrature::GaussLegendre,
        ..Default::default()
    })
}

#[test]
fn passes_split_to_fit_the_budget_with_the_same_result() {
    let (model, refs) = mnist_model("resnet", &candle_xai::Device::cpu());
    let inputs = refs.f32("inputs");
    let request = |memory_limit| Request {
        method: integrated_gradients(12),
        targets: Targets::Classes(refs.targets()),
        layer: None,
        memory_limit,
        share: None,
    };
    let whole = explain(&model, &inputs, &request(None), &mut Progress::none()).unwrap();
    // Room for the batch once: one path point per pass.
    let per_batch = model.graph().pass_bytes(inputs.dims(), inputs.dim(0).unwrap()).unwrap();
    let mut passes = 0;
    let mut count = |_done: usize, _total: usize| {
        passes += 1;
        true
    };
    let split = explain(
        &model,
        &inputs,
        &request(Some(per_batch)),
        &mut Progress::new(&mut count),
    )
    .unwrap();
    assert_eq!(passes, 12 + 1, "one report before each pass and one at the end");
    let err = relative_error(&split.attributions, &whole.attributions);
    assert!(err < 1e-5, "split passes differ from whole ones by {err:.2e}");
}

#[test]
fn an_input_that_cannot_fit_is_refused_before_anything_is_allocated() {
    let dir = scratch("memory-budget", "too-large");
    let (weights, graph) = tiny_rgb_model(&dir);
    let graph = candle_xai::import::graph_json::GraphSpec::from_json(&std::fs::read_to_string(graph).unwrap()).unwrap();
    let options = LoadOptions {
        arch: None,
        graph: Some(graph),
    };
    let model = Model::load(&weights, &options, &Device::Cpu).unwrap();
    let input = Tensor::zeros((1, 3, 1024, 1024), DType::F32, &Device::Cpu).unwrap();
    let request = Request {
        memory_limit: Some(16 << 20),
        ..Request::new(Method::InputXGradient)
    };
    let err = explain(&model, &input, &request, &mut Progress::none())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("[3, 1024, 1024]") && err.contains("more than the 16 MiB"),
        "{err}"
    );
    // Within the default budget, it runs.
    let small = Tensor::zeros((1, 3, 64, 64), DType::F32, &Device::Cpu).unwrap();
    explain(
        &model,
        &small,
        &Request::new(Method::InputXGradient),
        &mut Progress::none(),
    )
    .unwrap();
}

/// A model whose sizes blow up (a padding of 200,000 around an 8x8 input: terabytes) is
/// refused when classifying, from the plan, rather than aborting on a failed allocation; and
/// the forward plan is not below what the pass really holds.
#[test]
fn a_forward_that_cannot_fit_is_refused_before_anything_is_allocated() {
    let dir = scratch("memory-budget", "huge-padding");
    let (weights, graph) = tiny_rgb_model(&dir);
    let load = |padding: usize| {
        let json = std::fs::read_to_string(&graph).unwrap().replace(
            r#""kernel_size": 3}"#,
            &format!(r#""kernel_size": 3, "padding": {padding}}}"#),
        );
        let options = LoadOptions {
            arch: None,
            graph: Some(candle_xai::import::graph_json::GraphSpec::from_json(&json).unwrap()),
        };
        Model::load(&weights, &options, &Device::Cpu).unwrap()
    };
    let input = Tensor::zeros((1, 3, 8, 8), DType::F32, &Device::Cpu).unwrap();
    let padded = load(200_000);
    let err = padded.predict(&input).unwrap_err().to_string();
    assert!(
        err.contains("classifying 1 input(s) of [3, 8, 8]") && err.contains("MiB of memory, more than the"),
        "{err}"
    );
    // Scoring runs the same clean forward first, and is refused the same way.
    let request = candle_xai::metrics::EvaluationRequest {
        metrics: vec![candle_xai::metrics::Metric::from_name("abpc").unwrap()],
        targets: Targets::TopPrediction,
        explainer: None,
        memory_limit: None,
        pooling: candle_xai::metrics::Pooling::None,
    };
    let err = candle_xai::metrics::evaluate(&padded, &input, &input, &request, &mut Progress::none())
        .unwrap_err()
        .to_string();
    assert!(err.contains("classifying 1 input(s) of [3, 8, 8]"), "{err}");
    // Padded by 100: at the ReLU the convolution's output (206x206x4, freed after it) and the
    // ReLU's own are held at once; the plan covers at least that.
    let model = load(100);
    let planned = model.graph().forward_bytes(input.dims(), 1).unwrap();
    let held = 4 * 2 * 206 * 206 * 4;
    assert!(planned >= held, "planned {planned} bytes, {held} held");
    model.predict(&input).unwrap();
}
