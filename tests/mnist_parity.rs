//! Parity with captum and zennit on the three trained MNIST models of `tests/fixtures/mnist`
//! (copied from the team's shared references; see its README for how each tensor was made).

mod common;

use candle_core::{Device, Tensor};
use candle_xai::lrp::{Composite, MergeConvention};
use candle_xai::methods::LrpParams;
use candle_xai::methods::*;
use candle_xai::Model;
use common::{assert_close, devices, Refs, PATH_TOL, REL_TOL};

const MODELS: [&str; 3] = ["mlp", "vgg", "resnet"];

fn load(name: &str, device: &candle_xai::Device) -> (Model, Refs) {
    common::mnist_model(name, device)
}

fn run(model: &Model, refs: &Refs, method: Method, layer: Option<&str>) -> Explanation {
    common::explain_refs(model, refs, method, layer)
}

/// Runs `check` for every model on every device.
fn for_each_model(check: impl Fn(&str, &Model, &Refs)) {
    for device in devices() {
        for name in MODELS {
            let (model, refs) = load(name, &device);
            check(name, &model, &refs);
        }
    }
}

#[test]
fn logits() {
    for_each_model(|name, model, refs| {
        let logits = model.predict(&refs.f32("inputs")).unwrap();
        assert_close(&format!("{name} logits"), &logits, refs.get("logits"), REL_TOL);
    });
}

#[test]
fn saliency_and_input_x_gradient() {
    for_each_model(|name, model, refs| {
        let signed = run(model, refs, Method::Gradient(GradientParams { abs: false }), None);
        assert_close(
            &format!("{name} saliency"),
            &signed.attributions,
            refs.get("saliency"),
            REL_TOL,
        );
        let abs = run(model, refs, Method::Gradient(GradientParams { abs: true }), None);
        assert_close(
            &format!("{name} saliency_abs"),
            &abs.attributions,
            refs.get("saliency_abs"),
            REL_TOL,
        );
        let ixg = run(model, refs, Method::InputXGradient, None);
        assert_close(
            &format!("{name} input_x_gradient"),
            &ixg.attributions,
            refs.get("input_x_gradient"),
            REL_TOL,
        );
    });
}

#[test]
fn integrated_gradients() {
    for_each_model(|name, model, refs| {
        for (quadrature, key) in [
            (Quadrature::GaussLegendre, "ig_gausslegendre"),
            (Quadrature::RiemannTrapezoid, "ig_riemann_trapezoid"),
        ] {
            // The quadrature points are captum's: Gauss-Legendre to f64 precision; the Riemann
            // alphas are torch.linspace float32 values, whose last bit depends on the CPU's
            // vector width (AVX2 vs AVX-512), so they agree to f32 precision.
            let (steps, alphas) = quadrature.points(50);
            let to_t = |v: Vec<f64>| Tensor::new(v, &Device::Cpu).unwrap();
            assert_close(
                &format!("{key} alphas"),
                &to_t(alphas),
                refs.get(&format!("{key}_alphas")),
                1e-6,
            );
            assert_close(
                &format!("{key} steps"),
                &to_t(steps),
                refs.get(&format!("{key}_step_sizes")),
                1e-12,
            );
            let params = IntegratedGradientsParams {
                n_steps: 50,
                quadrature,
                batch_size: Some(37),
                ..Default::default()
            };
            let out = run(model, refs, Method::IntegratedGradients(params), None);
            assert_close(&format!("{name} {key}"), &out.attributions, refs.get(key), PATH_TOL);
            let delta = out.convergence_delta.unwrap();
            let ref_delta = refs.get(&format!("{key}_delta"));
            // The delta is a difference of near-equal sums: compare against the logit scale.
            let scale = refs
                .get("logits")
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            let diff = (delta.to_device(&Device::Cpu).unwrap() - ref_delta)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(diff <= PATH_TOL * scale, "{name} {key} delta differs by {diff}");
        }
    });
}

#[test]
fn smoothgrad_with_captums_noise() {
    for_each_model(|name, model, refs| {
        let params_ref = refs.get("smoothgrad_params").to_vec1::<f64>().unwrap();
        let params = SmoothGradParams {
            n_samples: params_ref[0] as usize,
            stdev: Some(params_ref[1]),
            noise: Some(refs.f32("smoothgrad_noise")),
            batch_size: Some(12),
            ..Default::default()
        };
        let out = run(model, refs, Method::SmoothGrad(params), None);
        assert_close(
            &format!("{name} smoothgrad"),
            &out.attributions,
            refs.get("smoothgrad"),
            PATH_TOL,
        );
    });
}

#[test]
fn grad_cam() {
    for_each_model(|name, model, refs| {
        if name == "mlp" {
            return;
        }
        let (conv, block) = if name == "vgg" {
            ("features.11", "features.13")
        } else {
            ("layer3.conv2", "layer3")
        };
        let cam = |relu, upsample, layer| {
            run(
                model,
                refs,
                Method::GradCam(GradCamParams { relu, upsample }),
                Some(layer),
            )
            .attributions
        };
        assert_close(
            &format!("{name} gradcam"),
            &cam(false, false, conv),
            refs.get("gradcam"),
            REL_TOL,
        );
        assert_close(
            &format!("{name} gradcam_relu"),
            &cam(true, false, conv),
            refs.get("gradcam_relu"),
            REL_TOL,
        );
        assert_close(
            &format!("{name} gradcam_relu_upsampled"),
            &cam(true, true, conv),
            refs.get("gradcam_relu_upsampled"),
            REL_TOL,
        );
        assert_close(
            &format!("{name} gradcam_on_block_output"),
            &cam(false, false, block),
            refs.get("gradcam_on_block_output"),
            REL_TOL,
        );
        // Without a layer, Grad-CAM uses the model's default layer.
        let default = run(
            model,
            refs,
            Method::GradCam(GradCamParams {
                relu: true,
                upsample: true,
            }),
            None,
        )
        .attributions;
        assert_close(
            &format!("{name} default-layer gradcam"),
            &default,
            refs.get("gradcam_relu_upsampled"),
            REL_TOL,
        );
    });
}

#[test]
fn lrp_composites() {
    let cases = [
        (Composite::EpsilonGammaBox, "lrp_epsilon_gamma_box"),
        (Composite::EpsilonPlus, "lrp_epsilon_plus"),
        (Composite::EpsilonAlpha2Beta1, "lrp_epsilon_alpha2_beta1"),
        (Composite::UniformEpsilon, "lrp_epsilon_0_25"),
    ];
    for_each_model(|name, model, refs| {
        for (composite, key) in cases {
            // The fixtures come from zennit 0.5.1, whose merged BatchNorm keeps its eps.
            let mut params = LrpParams::new(composite);
            params.merge_convention = MergeConvention::KeepEps;
            let out = run(model, refs, Method::Lrp(params.clone()), None);
            assert_close(&format!("{name} {key}"), &out.attributions, refs.get(key), REL_TOL);
            // zennit 1.0's exact merge differs from 0.5.1's by the sqrt(1 + eps) factors only.
            params.merge_convention = MergeConvention::Exact;
            let exact = run(model, refs, Method::Lrp(params), None);
            assert_close(
                &format!("{name} {key} (exact merge)"),
                &exact.attributions,
                refs.get(key),
                1e-3,
            );
        }
    });
}
