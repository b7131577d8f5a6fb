//! Parity with captum, zennit and lxt on torchvision's resnet18, vgg11_bn, mobilenet_v2,
//! efficientnet_b0, mobilenet_v3_small and convnext_tiny (seeded random weights, random
//! normalisation statistics, 2x3x64x64 inputs with flat regions that make max-pool ties).
//! Fixtures: `scripts/make_fixtures.py`; see tests/fixtures/README.md.
//! Every method on every model and device: max |ours - ref| <= 1e-4 * max |ref| (the path
//! methods within their float32 kink bound, [`crate::common::PATH_TOL`]). On a GPU, the first
//! input only, and without the variants that repeat a checked one's passes ([`TORCHVISION`]).

use std::collections::HashMap;

use candle_core::{Device as CpuDevice, Tensor};
use candle_xai::import::StateDict;
use candle_xai::lrp::{Composite, MergeConvention};
use candle_xai::methods::{
    Aggregate, AttentionRolloutParams, Baseline, HeadFusion, IntegratedGradientsParams, Method, Quadrature,
};
use candle_xai::Model;

use crate::common::parity::{parity_tests, Case, Suite};
use crate::common::seeded_weights::weights_from_metadata;
use crate::common::{fixture, Refs, REL_TOL};

/// Row 1 of the fixture input has flat regions: its max-pool windows hold values that are
/// equal up to the last bit, and which one wins depends on how each library's convolution
/// rounds (our gemm vs PyTorch's oneDNN). The gradient's route through those windows, and so
/// the attribution there, legitimately differs; `layer_edge_cases` checks the tie rule itself
/// on exact ties. Row 0 (smooth) must match to the method's tolerance.
/// Measured: up to 2.3e-2 (resnet18 saliency), 1e-6 on most tensors.
const FLAT_ROW_TOL: f32 = 5e-2;

const TORCHVISION: Suite = Suite {
    load,
    lenient_rows: &[1],
    lenient_tol: FLAT_ROW_TOL,
    // `inputs_folded_logits` documents what zennit's canonizer does to the logits.
    not_results: &["inputs", "targets", "inputs_folded_logits"],
    // Integrated Gradients' quadratures differ only in their points and weights, the constant
    // baseline only in the path's start, `multiply_by_inputs: false` only in leaving out the
    // last product: on a GPU, Gauss-Legendre IG (and layer IG) check the passes themselves.
    // SmoothGrad's aggregates share their passes and both running sums; VarGrad (mean of
    // squares minus the squared mean) checks both on the GPU, so the plain and squared means
    // are left to the CPU.
    cpu_only: &[
        "ig_riemann_left",
        "ig_riemann_right",
        "ig_riemann_middle",
        "ig_riemann_trapezoid",
        "ig_baseline_const",
        "ig_no_multiply",
        "smoothgrad",
    ],
    // Row 0, the smooth one: row 1 exists for max-pool ties against PyTorch's CPU rounding,
    // which the GPU's kernels do not share either.
    gpu_rows: Some(1),
};

/// The model rebuilt from the fixture's weight recipe and recognised from its tensor names.
pub(crate) fn load(name: &str) -> (Model, Refs) {
    let refs = Refs::load(&fixture(&format!("{name}_refs.safetensors")));
    let tensors: HashMap<String, Tensor> = weights_from_metadata(&refs.metadata["weights"])
        .into_iter()
        .map(|(name, shape, values)| (name, Tensor::from_vec(values, shape, &CpuDevice::Cpu).unwrap()))
        .collect();
    let model = Model::from_state_dict(&StateDict::new(tensors, name), None, None, &CpuDevice::Cpu).unwrap();
    assert_eq!(model.architecture(), name, "recognised architecture");
    (model, refs)
}

parity_tests!(TORCHVISION, check; resnet18, vgg11_bn, mobilenet_v2);

/// The newer families on a GPU: one pass of each kind (the gradient family, Grad-CAM, the
/// layer gradients, zennit's EpsilonPlus and lxt's rules, which between them run every
/// operation's forward, input-VJP and LRP rule on the GPU), the methods that only repeat
/// those passes left to the CPU. A software adapter takes 10-100 s per model for this much
/// (DenseNet's concatenations and ConvNeXt's dense layers over every position are the
/// slowest); the kernels themselves are the backend suite's, on small shapes.
const FAMILIES: Suite = Suite {
    cpu_only: &[
        "ig_gausslegendre",
        "ig_riemann_left",
        "ig_riemann_right",
        "ig_riemann_middle",
        "ig_riemann_trapezoid",
        "ig_baseline_const",
        "ig_no_multiply",
        "layer_ig",
        "smoothgrad",
        "vargrad",
        "lrp_epsilon_gamma_box",
        "lrp_epsilon_alpha2_beta1",
        "lrp_epsilon_plus_flat",
        "lrp_epsilon_alpha2_beta1_flat",
        "lrp_epsilon_0_25",
        "lrp_epsilon_plus_layer",
    ],
    ..TORCHVISION
};

parity_tests!(
    FAMILIES,
    check;
    efficientnet_b0,
    mobilenet_v3_small,
    convnext_tiny,
    densenet121,
    shufflenet_v2_x1_0,
    squeezenet1_1,
    regnet_y_400mf
);

/// timm's EfficientNet-B0 and ConvNeXt-Tiny (`scripts/make_timm_refs.py`): the torchvision
/// fixtures' seeded weights under timm's names, explained by captum on timm's own models (whose
/// references equal the torchvision fixtures' bit for bit). Each method once (saliency,
/// Input x Gradient, Gauss-Legendre IG, SmoothGrad, Grad-CAM at timm's module): the variants
/// (other quadratures and baselines, the other SmoothGrad aggregates) repeat the same passes on
/// the same graph, and the torchvision suite checks them on these very weights.
const TIMM: Suite = Suite {
    load: load_timm,
    not_results: &[
        "inputs",
        "targets",
        "ig_riemann_left",
        "ig_riemann_left_alphas",
        "ig_riemann_left_delta",
        "ig_riemann_left_step_sizes",
        "ig_riemann_right",
        "ig_riemann_right_alphas",
        "ig_riemann_right_delta",
        "ig_riemann_right_step_sizes",
        "ig_riemann_middle",
        "ig_riemann_middle_alphas",
        "ig_riemann_middle_delta",
        "ig_riemann_middle_step_sizes",
        "ig_riemann_trapezoid",
        "ig_riemann_trapezoid_alphas",
        "ig_riemann_trapezoid_delta",
        "ig_riemann_trapezoid_step_sizes",
        "ig_baseline_const",
        "ig_no_multiply",
        "smoothgrad_sq",
        "vargrad",
    ],
    ..FAMILIES
};

/// The torchvision recipe's weights renamed to timm's names (metadata `timm_names`, in order);
/// ConvNeXt's layer scale is [C, 1, 1] in torchvision and [C] (`gamma`) in timm.
fn load_timm(name: &str) -> (Model, Refs) {
    let refs = Refs::load(&fixture(&format!("{name}_refs.safetensors")));
    let timm_names: Vec<String> = serde_json::from_str(&refs.metadata["timm_names"]).unwrap();
    let weights = weights_from_metadata(&refs.metadata["weights"]);
    assert_eq!(weights.len(), timm_names.len(), "one timm name per tensor");
    let tensors: HashMap<String, Tensor> = weights
        .into_iter()
        .zip(timm_names)
        .map(|((_, shape, values), timm)| {
            let shape = match timm.ends_with(".gamma") {
                true => vec![values.len()],
                false => shape,
            };
            (timm, Tensor::from_vec(values, shape, &CpuDevice::Cpu).unwrap())
        })
        .collect();
    let model = Model::from_state_dict(&StateDict::new(tensors, name), None, None, &CpuDevice::Cpu).unwrap();
    assert_eq!(model.architecture(), name, "recognised architecture");
    (model, refs)
}

parity_tests!(TIMM, check_timm; timm_efficientnet_b0, timm_convnext_tiny);

fn check_timm(case: &Case) {
    case.check_gradients(None);
    case.check_integrated_gradients(Quadrature::GaussLegendre, Some(10));
    case.check_smoothgrad(Aggregate::Mean, "smoothgrad", None);
    grad_cam_at_default_layer(case);
}

/// Vision transformers under torchvision's, timm's (a distilled DeiT) and Hugging Face's names
/// (`scripts/make_vit_fixtures.py`): the gradient family against captum; AttnLRP and CP-LRP
/// against lxt on torchvision's.
const TRANSFORMERS: Suite = TORCHVISION;

parity_tests!(
    TRANSFORMERS,
    check_transformer;
    vit_w128_d2_8,
    timm_deit_w128_d2_distilled_patch8_64,
    hf_vit_w128_d2_patch8_64
);

fn check_transformer(case: &Case) {
    check_gradient_family(case);
    // The default layer is pytorch-grad-cam's for ViTs, and the fixture's.
    grad_cam_at_default_layer(case);
    // At the first encoder block's output, by the library's module name.
    layer_attribution(case);
    for (head_fusion, discard_ratio, key) in [
        (HeadFusion::Min, 0.9, "rollout_min_0_9"),
        (HeadFusion::Mean, 0.0, "rollout_mean_0"),
        (HeadFusion::Max, 0.5, "rollout_max_0_5"),
    ] {
        let params = AttentionRolloutParams {
            head_fusion,
            discard_ratio,
        };
        let tol = case.conditioned_tol(key, REL_TOL);
        case.check(key, Method::AttentionRollout(params), None, tol);
    }
    let tol = case.conditioned_tol("generic_attention", REL_TOL);
    case.check("generic_attention", Method::GenericAttention, None, tol);
    for (composite, key) in [(Composite::AttnLrp, "lrp_attn"), (Composite::CpLrp, "lrp_cp")] {
        if case.refs.tensors.contains_key(key) {
            case.check_lrp(composite, key, None, MergeConvention::KeepEps);
        }
    }
}

/// Saliency, Input x Gradient, Integrated Gradients and SmoothGrad.
fn check_gradient_family(case: &Case) {
    case.check_gradients(None);
    integrated_gradients(case);
    for (aggregate, key) in [
        (Aggregate::Mean, "smoothgrad"),
        (Aggregate::Squared, "smoothgrad_sq"),
        (Aggregate::Variance, "vargrad"),
    ] {
        case.check_smoothgrad(aggregate, key, None);
    }
}

fn check(case: &Case) {
    check_gradient_family(case);
    grad_cam(case);
    layer_attribution(case);
    for (composite, key) in [
        (Composite::EpsilonGammaBox, "lrp_epsilon_gamma_box"),
        (Composite::EpsilonPlus, "lrp_epsilon_plus"),
        (Composite::EpsilonAlpha2Beta1, "lrp_epsilon_alpha2_beta1"),
        (Composite::EpsilonPlusFlat, "lrp_epsilon_plus_flat"),
        (Composite::EpsilonAlpha2Beta1Flat, "lrp_epsilon_alpha2_beta1_flat"),
        (Composite::UniformEpsilon, "lrp_epsilon_0_25"),
    ] {
        case.check_lrp(composite, key, None, MergeConvention::KeepEps);
    }
    // lxt's rules, in the fixtures of the families they were made for.
    if case.refs.tensors.contains_key("lrp_gamma_identity") {
        case.check_lrp(
            Composite::GammaIdentity,
            "lrp_gamma_identity",
            None,
            MergeConvention::KeepEps,
        );
    }
    case.check_lrp(
        Composite::EpsilonPlus,
        "lrp_epsilon_plus_layer",
        Some(case.meta("lrp_layer")),
        MergeConvention::KeepEps,
    );
}

fn integrated_gradients(case: &Case) {
    for quadrature in Quadrature::ALL {
        case.check_integrated_gradients(quadrature, Some(10));
    }
    let constant = IntegratedGradientsParams {
        n_steps: 16,
        baseline: Baseline::Constant { value: 0.5 },
        ..Default::default()
    };
    let tol = case.path_tol("ig_baseline_const");
    case.check("ig_baseline_const", Method::IntegratedGradients(constant), None, tol);
    let plain = IntegratedGradientsParams {
        n_steps: 16,
        multiply_by_inputs: false,
        ..Default::default()
    };
    let tol = case.path_tol("ig_no_multiply");
    case.check("ig_no_multiply", Method::IntegratedGradients(plain), None, tol);
}

/// Grad-CAM with no layer named: at the model's default layer, which must be the fixture's.
fn grad_cam_at_default_layer(case: &Case) {
    case.attempt("default Grad-CAM layer", || {
        let model = &case.model;
        assert!(model
            .graph()
            .node(model.default_cam_layer().unwrap())
            .answers_to(case.meta("gradcam_layer")));
    });
    case.check_grad_cam("gradcam", false, false, None);
    case.check_grad_cam("gradcam_relu", true, false, None);
    case.check_grad_cam("gradcam_relu_upsampled", true, true, None);
}

fn grad_cam(case: &Case) {
    grad_cam_at_default_layer(case);
    case.check_grad_cam("gradcam_mid", true, false, Some(case.meta("gradcam_mid_layer")));
}

fn layer_attribution(case: &Case) {
    let layer = Some(case.meta("layer_attr_layer"));
    case.check_gradients(layer);
    let params = IntegratedGradientsParams {
        n_steps: 16,
        ..Default::default()
    };
    let tol = case.path_tol("layer_ig");
    if let Some(out) = case.check("layer_ig", Method::IntegratedGradients(params), layer, tol) {
        case.compare_delta("layer_ig_delta", out.convergence_delta.as_ref());
    }
}
