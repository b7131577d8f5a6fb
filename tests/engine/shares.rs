//! One explanation split into shares (the page's workers each take one): IG's path points and
//! SmoothGrad's noisy copies, whose attributions (and IG's convergence deltas) add up to the
//! whole method's; the methods that do not add up refuse to be split.

use candle_core::Tensor;
use candle_xai::methods::{Aggregate, IntegratedGradientsParams, SmoothGradParams};
use candle_xai::{explain, Explanation, Method, Progress, Request, Share, Targets};

use crate::common::{max_abs, max_abs_diff, mnist_model, relative_error};

fn explained(model: &candle_xai::Model, inputs: &Tensor, request: &Request) -> candle_xai::Result<Explanation> {
    explain(model, inputs, request, &mut Progress::none())
}

#[test]
fn shares_add_up_to_the_whole_explanation() {
    let (model, refs) = mnist_model("resnet", &candle_xai::Device::cpu());
    let inputs = refs.f32("inputs");
    let methods = [
        Method::IntegratedGradients(IntegratedGradientsParams {
            n_steps: 7,
            ..Default::default()
        }),
        Method::SmoothGrad(SmoothGradParams {
            n_samples: 5,
            ..Default::default()
        }),
        Method::SmoothGrad(SmoothGradParams {
            n_samples: 5,
            aggregate: Aggregate::Squared,
            ..Default::default()
        }),
    ];
    for method in methods {
        let name = method.name();
        let whole_request = Request {
            targets: Targets::Classes(refs.targets()),
            ..Request::new(method)
        };
        let whole = explained(&model, &inputs, &whole_request).unwrap();
        for count in [2, 3] {
            let parts: Vec<Explanation> = (0..count)
                .map(|index| {
                    let request = Request {
                        share: Some(Share { index, count }),
                        ..whole_request.clone()
                    };
                    explained(&model, &inputs, &request).unwrap()
                })
                .collect();
            let sum = |pick: fn(&Explanation) -> Option<&Tensor>| -> Option<Tensor> {
                parts
                    .iter()
                    .map(|p| pick(p).cloned())
                    .reduce(|a, b| Some((a? + b?).unwrap()))?
            };
            let attributions = sum(|e| Some(&e.attributions)).unwrap();
            let err = relative_error(&attributions, &whole.attributions);
            assert!(err < 1e-6, "{name} in {count} shares: {err:.2e} from the whole");
            // Each share is a part, not the whole again.
            assert!(
                relative_error(&parts[0].attributions, &whole.attributions) > 0.1,
                "{name}"
            );
            if let Some(delta) = &whole.convergence_delta {
                let deltas = sum(|e| e.convergence_delta.as_ref()).unwrap();
                let off = max_abs_diff(&deltas, delta);
                let scale = max_abs(&whole.logits);
                assert!(
                    off <= 1e-5 * scale,
                    "{name}: the shares' deltas add up to {off:.2e} from the whole's"
                );
            }
        }
    }
}

#[test]
fn what_cannot_be_split_says_so() {
    let (model, refs) = mnist_model("mlp", &candle_xai::Device::cpu());
    let inputs = refs.f32("inputs");
    let split = |method: Method, index, count| {
        let request = Request {
            targets: Targets::Classes(refs.targets()),
            share: Some(Share { index, count }),
            ..Request::new(method)
        };
        explained(&model, &inputs, &request).unwrap_err().to_string()
    };
    let vargrad = Method::SmoothGrad(SmoothGradParams {
        aggregate: Aggregate::Variance,
        ..Default::default()
    });
    for (message, named) in [
        (
            split(Method::from_name("gradient").unwrap(), 0, 2),
            "gradient does not split",
        ),
        (split(vargrad, 0, 2), "smoothgrad does not split"),
        (
            split(Method::from_name("integrated-gradients").unwrap(), 0, 51),
            "share 0 of 51 does not fit 50",
        ),
        (
            split(Method::from_name("integrated-gradients").unwrap(), 2, 2),
            "share 2 of 2",
        ),
    ] {
        assert!(message.contains(named), "{message}");
    }
    // One share of one is the whole method, for any method.
    let request = Request {
        targets: Targets::Classes(refs.targets()),
        share: Some(Share { index: 0, count: 1 }),
        ..Request::new(Method::from_name("gradient").unwrap())
    };
    explained(&model, &inputs, &request).unwrap();
}
