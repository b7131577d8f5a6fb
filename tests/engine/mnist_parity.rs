//! Parity with captum and zennit on the three trained MNIST models of `tests/fixtures/mnist`
//! (copied from the team's shared references; see its README for how each tensor was made).
//! Every method and composite runs on every device; on a GPU, the variants that differ from
//! a checked one only in host-side arithmetic are left to the CPU (see [`MNIST`]).

use candle_xai::lrp::{Composite, MergeConvention};
use candle_xai::methods::{Aggregate, GradCamParams, Method, Quadrature};

use crate::common::parity::{parity_tests, Case, Suite};

const MNIST: Suite = Suite {
    load,
    lenient_rows: &[],
    lenient_tol: 0.0,
    not_results: &["inputs", "inputs_raw01", "targets"],
    // Riemann-trapezoid IG differs from Gauss-Legendre IG only in its points and weights.
    cpu_only: &["ig_riemann_trapezoid"],
    gpu_rows: None,
};

fn load(name: &str) -> (candle_xai::Model, crate::common::Refs) {
    crate::common::mnist_model(name, &candle_xai::Device::cpu())
}

parity_tests!(MNIST, check; mlp, vgg, resnet);

fn check(case: &Case) {
    case.check_gradients(None);
    // Batches that split the path points and noisy copies unevenly.
    for quadrature in [Quadrature::GaussLegendre, Quadrature::RiemannTrapezoid] {
        case.check_integrated_gradients(quadrature, Some(37));
    }
    case.check_smoothgrad(Aggregate::Mean, "smoothgrad", Some(12));
    if let Some((conv, block)) = grad_cam_layers(case.name) {
        case.check_grad_cam("gradcam", false, false, Some(conv));
        case.check_grad_cam("gradcam_relu", true, false, Some(conv));
        case.check_grad_cam("gradcam_relu_upsampled", true, true, Some(conv));
        case.check_grad_cam("gradcam_on_block_output", false, false, Some(block));
        // Without a layer, Grad-CAM uses the model's default layer: the same conv.
        case.check(
            "gradcam_relu_upsampled",
            Method::GradCam(GradCamParams {
                relu: true,
                upsample: true,
            }),
            None,
            crate::common::REL_TOL,
        );
    }
    for (composite, key) in [
        (Composite::EpsilonGammaBox, "lrp_epsilon_gamma_box"),
        (Composite::EpsilonPlus, "lrp_epsilon_plus"),
        (Composite::EpsilonAlpha2Beta1, "lrp_epsilon_alpha2_beta1"),
        (Composite::UniformEpsilon, "lrp_epsilon_0_25"),
    ] {
        case.check_lrp(composite, key, None, MergeConvention::KeepEps);
        // The merge conventions differ only in the BatchNorm folding, done on the host.
        if !case.on_gpu() {
            case.check_lrp(composite, key, None, MergeConvention::Exact);
        }
    }
}

/// The fixture's Grad-CAM layers (a conv, and a block's output) of the convolutional models.
fn grad_cam_layers(model: &str) -> Option<(&'static str, &'static str)> {
    match model {
        "vgg" => Some(("features.11", "features.13")),
        "resnet" => Some(("layer3.conv2", "layer3")),
        _ => None,
    }
}
