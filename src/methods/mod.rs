//! The attribution methods and the one entry point that runs them.

pub(crate) mod attention;
mod baseline;
mod grad_cam;
mod gradient;
mod integrated_gradients;
mod lrp;
mod parameters;
pub(crate) mod probe;
mod quadrature;
mod smooth_grad;

pub use attention::{AttentionRolloutParams, HeadFusion};
pub use baseline::Baseline;
pub use grad_cam::GradCamParams;
pub use gradient::GradientParams;
pub use integrated_gradients::IntegratedGradientsParams;
pub use lrp::LrpParams;
pub use parameters::{
    catalog, methods_taking, not_applicable, Kind, MethodInfo, Parameter, ParameterInfo, Scale, Tunable,
};
pub use probe::{Progress, Share};
pub use quadrature::Quadrature;
pub use smooth_grad::{Aggregate, SmoothGradParams};

use candle_core::Tensor as HostTensor;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::Model;
use crate::render::{Colormap, Scaling, Style};
use crate::tensor::Tensor;
use probe::Probe;

/// zennit's `level` for LRP heatmaps: the colours saturate at 1/LRP_LEVEL of the largest
/// relevance (zennit's default, 1, leaves all but a few pixels white on MobileNetV2).
pub const LRP_LEVEL: f32 = 3.0;

/// A method with its parameters. Serialises as `{"method": "integrated-gradients", ...params}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "kebab-case")]
pub enum Method {
    Gradient(GradientParams),
    InputXGradient,
    #[serde(rename = "smoothgrad")]
    SmoothGrad(SmoothGradParams),
    IntegratedGradients(IntegratedGradientsParams),
    GradCam(GradCamParams),
    Lrp(LrpParams),
    AttentionRollout(AttentionRolloutParams),
    /// Chefer et al. 2021's gradient-weighted attention rollout.
    GenericAttention,
}

impl Method {
    /// Names accepted by `from_name`, as the CLI spells them.
    pub const NAMES: [&'static str; 16] = [
        "gradient",
        "input-x-gradient",
        "smoothgrad",
        "integrated-gradients",
        "grad-cam",
        "lrp-uniform-epsilon",
        "lrp-epsilon-gamma-box",
        "lrp-epsilon-plus",
        "lrp-epsilon-alpha2-beta1",
        "lrp-epsilon-plus-flat",
        "lrp-epsilon-alpha2-beta1-flat",
        "lrp-gamma-identity",
        "lrp-attn",
        "lrp-cp",
        "attention-rollout",
        "generic-attention",
    ];

    /// The method called `name`, with its default parameters.
    pub fn from_name(name: &str) -> Result<Self> {
        Ok(match name {
            "gradient" | "saliency" => Method::Gradient(GradientParams::default()),
            "input-x-gradient" => Method::InputXGradient,
            "smoothgrad" | "smooth-grad" => Method::SmoothGrad(SmoothGradParams::default()),
            "integrated-gradients" | "ig" => Method::IntegratedGradients(IntegratedGradientsParams::default()),
            "grad-cam" | "gradcam" => Method::GradCam(GradCamParams::default()),
            "attention-rollout" | "rollout" => Method::AttentionRollout(AttentionRolloutParams::default()),
            "generic-attention" => Method::GenericAttention,
            other => match crate::lrp::Composite::from_name(other) {
                Some(composite) => Method::Lrp(LrpParams::new(composite)),
                None => {
                    return Err(Error::UnknownMethod {
                        name: other.to_string(),
                        known: Self::NAMES.join(", "),
                    })
                }
            },
        })
    }

    /// The method's name for people.
    pub fn label(&self) -> &'static str {
        match self {
            Method::Gradient(_) => "Gradient (saliency)",
            Method::InputXGradient => "Input × Gradient",
            Method::SmoothGrad(_) => "SmoothGrad",
            Method::IntegratedGradients(_) => "Integrated Gradients",
            Method::GradCam(_) => "Grad-CAM",
            Method::Lrp(p) => p.composite.label(),
            Method::AttentionRollout(_) => "Attention rollout",
            Method::GenericAttention => "Gradient-weighted attention (Chefer)",
        }
    }

    /// One sentence on what the method computes.
    pub fn help(&self) -> &'static str {
        match self {
            Method::Gradient(_) => "The gradient of the class score with respect to each pixel (signed).",
            Method::InputXGradient => "The gradient times the input: first-order contribution of each pixel.",
            Method::SmoothGrad(_) => "The gradient averaged over noisy copies of the photo: less speckle.",
            Method::IntegratedGradients(_) => {
                "Gradients integrated along a straight path from a black baseline to the photo; the attributions sum to the score difference."
            }
            Method::GradCam(_) => {
                "A coarse map from a convolutional layer's activations weighted by their pooled gradients."
            }
            Method::Lrp(p) => p.composite.help(),
            Method::AttentionRollout(_) => {
                "How much the class token attends to each patch through all the blocks: the attention maps, heads \
                 fused, multiplied block by block (transformers only)."
            }
            Method::GenericAttention => {
                "Attention weighted by its gradient for the class, accumulated block by block (Chefer et al. 2021; \
                 transformers only)."
            }
        }
    }

    /// Whether the method can explain `model`: Grad-CAM needs a layer with a spatial (or token)
    /// output, and the transformer methods need attention.
    pub fn applies_to(&self, model: &Model) -> bool {
        match self {
            Method::GradCam(_) => model.default_cam_layer().is_ok(),
            _ => !self.for_transformers() || attention::has_attention(model.graph()),
        }
    }

    /// Attention rollout, gradient-weighted attention, AttnLRP and CP-LRP: methods defined on
    /// attention.
    fn for_transformers(&self) -> bool {
        match self {
            Method::AttentionRollout(_) | Method::GenericAttention => true,
            Method::Lrp(p) => matches!(
                p.composite,
                crate::lrp::Composite::AttnLrp | crate::lrp::Composite::CpLrp
            ),
            _ => false,
        }
    }

    /// The names of the methods that can explain `model`, in [`Method::NAMES`] order.
    pub fn applicable_to(model: &Model) -> Vec<&'static str> {
        Self::NAMES
            .into_iter()
            .filter(|name| Self::from_name(name).is_ok_and(|m| m.applies_to(model)))
            .collect()
    }

    /// How the method's heatmaps are scaled by default, as its field draws them: LRP as zennit
    /// does (`imgify(symmetric=True, level=...)`, the level raised because relevance sits on a
    /// few pixels), every other method as captum does (2% of the mass clipped as outliers).
    pub fn default_scaling(&self) -> Scaling {
        match self {
            Method::Lrp(_) => Scaling::Level { level: LRP_LEVEL },
            _ => Scaling::default(),
        }
    }

    /// The method's default colours: `hot` (min-max, as pytorch-grad-cam scales its maps) for
    /// the coarse non-negative maps of Grad-CAM and the attention methods, which a signed map
    /// would paint one red; `bwr` for the signed maps of the rest.
    pub fn default_colormap(&self) -> Colormap {
        match self {
            Method::GradCam(_) | Method::AttentionRollout(_) | Method::GenericAttention => Colormap::Hot,
            _ => Colormap::Bwr,
        }
    }

    /// The method's heatmap style: its colours and scaling, half opaque over the photo.
    pub fn default_style(&self) -> Style {
        Style {
            colormap: self.default_colormap(),
            scaling: self.default_scaling(),
            ..Style::default()
        }
    }

    pub fn name(&self) -> String {
        match self {
            Method::Gradient(_) => "gradient".into(),
            Method::InputXGradient => "input-x-gradient".into(),
            Method::SmoothGrad(_) => "smoothgrad".into(),
            Method::IntegratedGradients(_) => "integrated-gradients".into(),
            Method::GradCam(_) => "grad-cam".into(),
            Method::Lrp(p) => p.composite.name().into(),
            Method::AttentionRollout(_) => "attention-rollout".into(),
            Method::GenericAttention => "generic-attention".into(),
        }
    }
}

/// Which class each sample is explained for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Targets {
    /// Each sample's top-1 prediction.
    #[default]
    TopPrediction,
    /// One class per sample (or one class for all samples).
    Classes(Vec<i64>),
}

impl Targets {
    /// One class per sample, checked against the logits' class count.
    pub(crate) fn resolve(&self, logits: &HostTensor) -> Result<Vec<usize>> {
        let (batch, num_classes) = logits.dims2()?;
        match self {
            Targets::TopPrediction => Ok(logits
                .argmax(1)?
                .to_vec1::<u32>()?
                .into_iter()
                .map(|t| t as usize)
                .collect()),
            Targets::Classes(_) => self.given(batch, num_classes),
        }
    }

    /// The given classes for a batch of `batch` and a model of `num_classes`, checked; an
    /// error for [`Targets::TopPrediction`], which needs the logits ([`Targets::resolve`]).
    pub(crate) fn given(&self, batch: usize, num_classes: usize) -> Result<Vec<usize>> {
        match self {
            Targets::TopPrediction => Err(Error::Shape("the top prediction needs the model's logits".into())),
            Targets::Classes(classes) => {
                let classes = match classes.len() {
                    1 => vec![classes[0]; batch],
                    n if n == batch => classes.clone(),
                    n => return Err(Error::TargetCount { found: n, batch }),
                };
                classes
                    .into_iter()
                    .map(|t| {
                        usize::try_from(t)
                            .ok()
                            .filter(|&t| t < num_classes)
                            .ok_or(Error::TargetOutOfRange { target: t, num_classes })
                    })
                    .collect()
            }
        }
    }
}

/// What to explain: the method, the classes, and where (the input, or a layer's output).
#[derive(Debug, Clone)]
pub struct Request {
    pub method: Method,
    pub targets: Targets,
    /// A layer name for layer attribution (and Grad-CAM's layer); None = the input.
    pub layer: Option<String>,
    /// The most bytes the passes may hold at once on the CPU or CUDA; None = the device's
    /// budget ([`crate::tensor::Device::memory_budget`]). Multi-pass methods split their passes
    /// to fit; a single input that does not fit is an error naming both sizes.
    pub memory_limit: Option<u64>,
    /// Only this share of IG's path points or SmoothGrad's noisy copies, for explaining one
    /// input on several workers; None = all of them.
    pub share: Option<Share>,
}

impl Request {
    pub fn new(method: Method) -> Self {
        Self {
            method,
            targets: Targets::TopPrediction,
            layer: None,
            memory_limit: None,
            share: None,
        }
    }

    /// How many shares the method's work can be split into (IG's path points, SmoothGrad's
    /// noisy copies; not VarGrad, whose variance does not add up); 1 for the other methods.
    pub fn shares_possible(&self) -> usize {
        match &self.method {
            Method::IntegratedGradients(p) => p.n_steps,
            Method::SmoothGrad(p) if p.aggregate != Aggregate::Variance => p.n_samples,
            _ => 1,
        }
    }

    fn check_share(&self) -> Result<()> {
        let Some(share) = self.share else { return Ok(()) };
        if self.shares_possible() == 1 && share.count > 1 {
            return Err(Error::invalid_parameter(
                "share",
                format!(
                    "{} does not split into shares; Integrated Gradients and SmoothGrad (mean or squared) do",
                    self.method.name()
                ),
            ));
        }
        share.check(self.shares_possible())
    }
}

/// How many input rows one pass may hold within `limit` (the device's budget when None); an
/// error when the batch itself does not fit. wgpu bounds its tensors itself
/// ([`crate::tensor::Device::max_tensor_len`]).
pub(crate) fn rows_in_memory(model: &Model, dims: &[usize], limit: Option<u64>) -> Result<usize> {
    let Some(budget) = limit.or_else(|| model.device().memory_budget()) else {
        return Ok(usize::MAX);
    };
    let Some(per_row) = model.graph().pass_bytes(dims, 1) else {
        return Ok(usize::MAX);
    };
    let batch = dims[0] as u64;
    let needed = per_row.saturating_mul(batch);
    if needed > budget {
        return Err(Error::OverMemoryBudget {
            what: format!("explaining {batch} input(s) of {:?}", &dims[1..]),
            needed_mib: needed.div_ceil(1 << 20),
            budget_mib: budget >> 20,
        });
    }
    Ok(usize::try_from(budget / per_row.max(1)).unwrap_or(usize::MAX))
}

/// The result of a method before the common fields are attached.
pub(crate) struct Attribution {
    pub attributions: Tensor,
    /// Integrated Gradients' convergence delta per sample, on the host.
    pub convergence_delta: Option<HostTensor>,
}

/// An explanation, on the host (candle CPU tensors) whatever device computed it.
#[derive(Debug, Clone)]
pub struct Explanation {
    /// Shaped like the input, or like the layer's output, or [N, 1, H, W] for Grad-CAM.
    pub attributions: HostTensor,
    /// The model's logits on the unperturbed input, [N, classes].
    pub logits: HostTensor,
    /// The class each sample was explained for.
    pub targets: Vec<usize>,
    /// Integrated Gradients' convergence delta per sample.
    pub convergence_delta: Option<HostTensor>,
}

/// Explains `input` ([N, C, H, W], already normalised) with `request`, on the model's device,
/// blocking until the result is on the host. The browser, which cannot block, awaits
/// [`explain_async`] instead.
#[cfg(not(target_arch = "wasm32"))]
pub fn explain(
    model: &Model,
    input: &HostTensor,
    request: &Request,
    progress: &mut Progress<'_>,
) -> Result<Explanation> {
    pollster::block_on(explain_async(model, input, request, progress))
}

/// [`explain`] as a future. It awaits the device only where the host needs a value: the
/// logits (for the top-1 targets), between the passes of a multi-pass method, Grad-CAM's map
/// before upsampling, Integrated Gradients' convergence delta, and the final attributions.
pub async fn explain_async(
    model: &Model,
    input: &HostTensor,
    request: &Request,
    progress: &mut Progress<'_>,
) -> Result<Explanation> {
    // The host copy serves the methods that derive something from the input's values
    // (SmoothGrad's noise scale, IG's baseline) without reading the device copy back.
    request.method.validate()?;
    request.check_share()?;
    if request.method.for_transformers() && !request.method.applies_to(model) {
        return Err(Error::invalid_parameter(
            "method",
            format!(
                "{} explains transformers; this model has no attention (no Softmax whose weights multiply values)",
                request.method.name()
            ),
        ));
    }
    let host_input = model.check_input(input)?;
    let rows_in_memory = rows_in_memory(model, host_input.dims(), request.memory_limit)?;
    let input = model.device().upload(&host_input)?;
    let at = match (&request.layer, &request.method) {
        (Some(name), _) => model.graph().find(name)?,
        (None, Method::GradCam(_)) => model.default_cam_layer()?,
        (None, _) => 0,
    };
    let graph = model.graph_for_gradients_at(at)?;
    // Methods made of one backward pass on the unperturbed input reuse the forward pass that
    // gives the logits (and the top-1 targets); the others perturb the input, or (LRP) run a
    // canonized graph, and only need the logits.
    let single_pass = matches!(
        request.method,
        Method::Gradient(_)
            | Method::InputXGradient
            | Method::GradCam(_)
            | Method::AttentionRollout(_)
            | Method::GenericAttention
    );
    let (logits, activations, widest_row) = if single_pass {
        let activations = graph.forward(&input, None)?;
        let widest_row = activations.widest_row();
        (activations.output().clone(), Some(activations), widest_row)
    } else {
        let (logits, widest_row) = graph.predict_sized(&input)?;
        (logits, None, widest_row)
    };
    let host_logits = logits.to_host_async().await?;
    let targets = request.targets.resolve(&host_logits)?;
    let probe = Probe {
        model,
        graph,
        targets: &targets,
        at,
        widest_row,
        rows_in_memory,
    };
    let result = match (&request.method, activations) {
        (Method::SmoothGrad(p), _) => {
            smooth_grad::smooth_grad(&probe, &input, &host_input, p, request.share, progress).await?
        }
        (Method::IntegratedGradients(p), _) => {
            let share = request.share;
            integrated_gradients::integrated_gradients(&probe, &input, &host_input, &logits, p, share, progress).await?
        }
        (Method::Lrp(p), _) => lrp::relevance(&probe, &input, p, progress).await?,
        (Method::AttentionRollout(p), Some(activations)) => {
            attention::attention_rollout(graph, &activations, &input, p).await?
        }
        (Method::GenericAttention, Some(activations)) => {
            attention::generic_attention(&probe, &activations, &input).await?
        }
        (method, Some(activations)) => {
            progress.report(0, 1)?;
            let pass = probe.backward(&activations)?;
            let result = match method {
                Method::Gradient(p) => gradient::gradient(pass, p)?,
                Method::InputXGradient => gradient::input_x_gradient(pass)?,
                Method::GradCam(p) => grad_cam::grad_cam(pass, &graph.node(at).name, &input, p).await?,
                _ => unreachable!("only single-pass methods carry activations"),
            };
            progress.report(1, 1)?;
            result
        }
        (_, None) => unreachable!("single-pass methods always carry activations"),
    };
    Ok(Explanation {
        attributions: result.attributions.to_host_async().await?,
        logits: host_logits,
        targets,
        convergence_delta: result.convergence_delta,
    })
}
