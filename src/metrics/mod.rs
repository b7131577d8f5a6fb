//! Which explanation to trust: pnpxai 0.1.4's evaluation metrics (MuFidelity, MoRF, LeRF,
//! AbPC, Sensitivity, Complexity) with its definitions, defaults and sign conventions, and
//! Quantus' model-parameter randomisation sanity check, on any model and device. The perturbed inputs of a metric go through the model in batches
//! ([`forward`]); random draws come from seeded per-sample streams ([`crate::rng::Stream`]).

mod complexity;
mod forward;
mod mu_fidelity;
mod pixel_flipping;
mod pooling;
mod randomisation;
mod sensitivity;
mod stats;

pub use complexity::ComplexityParams;
pub use forward::{DEFAULT_CPU_ROWS_PER_PASS, DEFAULT_ROWS_PER_PASS};
pub use mu_fidelity::MuFidelityParams;
pub use pixel_flipping::{AbpcParams, Curves, Order, PixelFlippingParams};
pub use pooling::Pooling;
pub use randomisation::{RandomisationCurve, RandomisationParams, Similarity};
pub use sensitivity::SensitivityParams;

use candle_core::Tensor as HostTensor;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::methods::{Parameter, ParameterInfo, Progress, Request, Targets};
use crate::model::Model;
use forward::Rows;
use pixel_flipping::{area_between, mean, softmax_at};

/// The most perturbations (steps, copies) one metric may ask for per sample.
pub const MAX_PERTURBATIONS: usize = 4096;

/// A metric with its parameters. Serialises as `{"metric": "abpc", ...params}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "metric", rename_all = "kebab-case")]
pub enum Metric {
    Abpc(AbpcParams),
    Morf(PixelFlippingParams),
    Lerf(PixelFlippingParams),
    MuFidelity(MuFidelityParams),
    Sensitivity(SensitivityParams),
    Complexity(ComplexityParams),
    /// The model-parameter randomisation sanity check.
    Randomisation(RandomisationParams),
}

/// A metric as [`Metric::catalog`] describes it.
#[derive(Debug, Clone, Serialize)]
pub struct MetricInfo {
    pub name: &'static str,
    pub higher_is_better: bool,
    pub parameters: Vec<ParameterInfo>,
}

impl Metric {
    /// Names accepted by [`Metric::from_name`].
    pub const NAMES: [&'static str; 7] = [
        "abpc",
        "morf",
        "lerf",
        "mu-fidelity",
        "sensitivity",
        "complexity",
        "randomisation",
    ];

    /// The metric called `name` with its default parameters.
    pub fn from_name(name: &str) -> Result<Self> {
        Ok(match name.trim().to_ascii_lowercase().replace('_', "-").as_str() {
            "abpc" => Metric::Abpc(AbpcParams::default()),
            "morf" => Metric::Morf(PixelFlippingParams::default()),
            "lerf" => Metric::Lerf(PixelFlippingParams::default()),
            "mu-fidelity" | "mufidelity" => Metric::MuFidelity(MuFidelityParams::default()),
            "sensitivity" => Metric::Sensitivity(SensitivityParams::default()),
            "complexity" => Metric::Complexity(ComplexityParams::default()),
            "randomisation" | "randomization" | "mprt" => Metric::Randomisation(RandomisationParams::default()),
            _ => {
                return Err(Error::invalid_parameter(
                    "metric",
                    format!("unknown metric `{name}`; known: {}", Self::NAMES.join(", ")),
                ))
            }
        })
    }

    pub fn name(&self) -> &'static str {
        match self {
            Metric::Abpc(_) => "abpc",
            Metric::Morf(_) => "morf",
            Metric::Lerf(_) => "lerf",
            Metric::MuFidelity(_) => "mu-fidelity",
            Metric::Sensitivity(_) => "sensitivity",
            Metric::Complexity(_) => "complexity",
            Metric::Randomisation(_) => "randomisation",
        }
    }

    /// pnpxai's sign convention: whether a larger value means a better explanation.
    pub fn higher_is_better(&self) -> bool {
        matches!(self, Metric::Abpc(_) | Metric::Lerf(_) | Metric::MuFidelity(_))
    }

    /// Whether the metric explains perturbed inputs (or a perturbed model) itself, and so
    /// needs the method.
    pub fn needs_method(&self) -> bool {
        matches!(self, Metric::Sensitivity(_) | Metric::Randomisation(_))
    }

    pub fn parameters(&self) -> Vec<Parameter> {
        match self {
            Metric::Abpc(p) => p.parameters(),
            Metric::Morf(p) | Metric::Lerf(p) => p.parameters(),
            Metric::MuFidelity(p) => p.parameters(),
            Metric::Sensitivity(p) => p.parameters(),
            Metric::Complexity(p) => p.parameters(),
            Metric::Randomisation(p) => p.parameters(),
        }
    }

    /// Every metric and its parameters with their defaults, for forms (the page's metric
    /// parameters): the seed is left out, it is the request's.
    pub fn catalog() -> Vec<MetricInfo> {
        Self::NAMES
            .iter()
            .filter_map(|name| Self::from_name(name).ok())
            .map(|metric| {
                let defaults = serde_json::to_value(&metric).unwrap_or_default();
                let parameters = metric
                    .parameters()
                    .into_iter()
                    .filter(|p| p.key != "seed")
                    .map(|parameter| ParameterInfo {
                        default: defaults.get(parameter.key).cloned().unwrap_or(Value::Null),
                        parameter,
                    })
                    .collect();
                MetricInfo {
                    name: metric.name(),
                    higher_is_better: metric.higher_is_better(),
                    parameters,
                }
            })
            .collect()
    }

    /// The metric called `name` with its defaults overridden by the JSON object `overrides`
    /// (null: the defaults); every key must be one of its parameters.
    pub fn from_json(name: &str, overrides: &Value) -> Result<Self> {
        let metric = Self::from_name(name)?;
        let Value::Object(mut values) =
            serde_json::to_value(&metric).map_err(|e| Error::invalid_parameter(name, e.to_string()))?
        else {
            unreachable!("a metric serialises as an object")
        };
        let parameters = metric.parameters();
        match overrides {
            Value::Null => {}
            Value::Object(given) => {
                for (key, value) in given {
                    let Some(parameter) = parameters.iter().find(|p| p.key == key) else {
                        let known: Vec<&str> = parameters.iter().map(|p| p.key).collect();
                        return Err(Error::invalid_parameter(
                            key,
                            format!(
                                "is not a parameter of {} (its parameters: {})",
                                metric.name(),
                                known.join(", ")
                            ),
                        ));
                    };
                    parameter.check(value)?;
                    values.insert(key.clone(), value.clone());
                }
            }
            _ => {
                return Err(Error::invalid_parameter(
                    "parameters",
                    "expected a JSON object of parameter values",
                ))
            }
        }
        let metric: Metric =
            serde_json::from_value(Value::Object(values)).map_err(|e| Error::invalid_parameter(name, e.to_string()))?;
        metric.validate()?;
        Ok(metric)
    }

    /// Checks every parameter against its range, then what the metric needs of them together.
    pub fn validate(&self) -> Result<()> {
        let values = serde_json::to_value(self).map_err(|e| Error::invalid_parameter(self.name(), e.to_string()))?;
        for parameter in self.parameters() {
            if let Some(value) = values.get(parameter.key).filter(|v| !v.is_null()) {
                parameter.check(value)?;
            }
        }
        match self {
            Metric::Abpc(p) => p.validate(),
            Metric::Morf(p) | Metric::Lerf(p) => p.validate(),
            Metric::MuFidelity(p) => p.validate(),
            Metric::Sensitivity(p) => p.validate(),
            Metric::Complexity(_) | Metric::Randomisation(_) => Ok(()),
        }
    }

    /// The pixel-flipping parameters and the orders this metric reads, if it flips pixels.
    fn flipping(&self) -> Option<(&PixelFlippingParams, &'static [Order])> {
        match self {
            Metric::Abpc(p) => Some((&p.flipping, &[Order::Descending, Order::Ascending])),
            Metric::Morf(p) => Some((p, &[Order::Descending])),
            Metric::Lerf(p) => Some((p, &[Order::Ascending])),
            _ => None,
        }
    }
}

/// What to evaluate: the metrics, and what made the attributions.
#[derive(Debug, Clone)]
pub struct EvaluationRequest {
    pub metrics: Vec<Metric>,
    /// The classes the attributions explain (the top-1 predictions by default).
    pub targets: Targets,
    /// The method that made the attributions, with its parameters: Sensitivity explains
    /// perturbed inputs with it. The other metrics only read the attributions.
    pub explainer: Option<Request>,
    /// As [`Request::memory_limit`]: the most bytes a pass of perturbed inputs may hold.
    pub memory_limit: Option<u64>,
    /// Pooling over the channels before scoring (pnpxai's post-processing); the metrics that
    /// explain again pool their explanations the same way.
    pub pooling: Pooling,
}

/// One metric's value per sample.
#[derive(Debug, Clone, Serialize)]
pub struct Score {
    pub metric: String,
    pub higher_is_better: bool,
    /// NaN where the metric is undefined for a sample (MuFidelity with constant scores).
    pub values: Vec<f64>,
    /// Pixel flipping's curves per sample (MoRF: most relevant first; LeRF: least), each
    /// `n_steps` probabilities from the unperturbed input on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub morf_curves: Option<Curves>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lerf_curves: Option<Curves>,
    /// The randomisation check's similarity after each checkpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub randomisation: Option<RandomisationCurve>,
}

/// The scores of every metric asked for, in the order asked.
#[derive(Debug, Clone, Serialize)]
pub struct Evaluation {
    pub targets: Vec<usize>,
    pub scores: Vec<Score>,
}

/// The inputs, attributions, targets and unperturbed logits the metrics read, on the host.
pub(crate) struct Samples<'a> {
    input: Vec<f32>,
    dims: (usize, usize, usize),
    attributions: Vec<f32>,
    /// Channels of the attributions: the input's, or 1 when pooled over channels.
    attribution_channels: usize,
    pooling: Pooling,
    targets: &'a [usize],
    /// The unperturbed logits, where a metric starts from them (pixel flipping, MuFidelity).
    logits: Option<Vec<Vec<f32>>>,
}

impl Samples<'_> {
    pub fn len(&self) -> usize {
        self.targets.len()
    }

    pub fn dims(&self) -> (usize, usize, usize) {
        self.dims
    }

    pub fn input(&self, b: usize) -> &[f32] {
        let len = self.dims.0 * self.dims.1 * self.dims.2;
        &self.input[b * len..(b + 1) * len]
    }

    /// Attribution values per sample: one per input element, or one per pixel.
    pub fn features(&self) -> usize {
        self.attribution_channels * self.dims.1 * self.dims.2
    }

    pub fn attribution(&self, b: usize) -> &[f32] {
        &self.attributions[b * self.features()..(b + 1) * self.features()]
    }

    pub fn attribution_channels(&self) -> usize {
        self.attribution_channels
    }

    /// Calls `f` with each input element that attribution `feature` covers: itself, or the
    /// pixel in every channel when the attributions are pooled over channels.
    pub fn for_each_element(&self, feature: usize, mut f: impl FnMut(usize)) {
        let (c, h, w) = self.dims;
        match self.attribution_channels == c {
            true => f(feature),
            false => (0..c).for_each(|k| f(k * h * w + feature)),
        }
    }

    /// The attributions summed over channels, per pixel, in float64.
    pub fn pixel_attributions(&self, b: usize) -> Vec<f64> {
        let pixels = self.dims.1 * self.dims.2;
        let mut sums = vec![0f64; pixels];
        for channel in self.attribution(b).chunks(pixels) {
            for (s, &a) in sums.iter_mut().zip(channel) {
                *s += a as f64;
            }
        }
        sums
    }

    /// Explanations made here (`count` samples of the input's shape) pooled as the scored
    /// attributions were.
    pub fn pooled(&self, values: Vec<f32>, count: usize) -> Vec<f32> {
        let (c, h, w) = self.dims;
        match self.pooling != Pooling::None && values.len() == count * c * h * w {
            true => self.pooling.apply(&values, count, c),
            false => values,
        }
    }

    pub fn target(&self, b: usize) -> usize {
        self.targets[b]
    }

    /// The target's logit on the unperturbed input.
    pub fn logit(&self, b: usize) -> f32 {
        self.clean_logits(b)[self.targets[b]]
    }

    /// The target's softmax probability on the unperturbed input.
    pub fn probability(&self, b: usize) -> f64 {
        softmax_at(self.clean_logits(b), self.targets[b])
    }

    fn clean_logits(&self, b: usize) -> &[f32] {
        let logits = self
            .logits
            .as_ref()
            .expect("evaluate_async runs the clean forward for these metrics");
        &logits[b]
    }
}

/// The attributions' channels if they fit the input: shaped like it, or pooled over channels
/// ([N, H, W] or [N, 1, H, W]).
fn attribution_channels(input: &[usize], attributions: &[usize]) -> Result<usize> {
    let &[n, c, h, w] = input else {
        unreachable!("the model checked the input's rank")
    };
    match *attributions {
        [an, ac, ah, aw] if (an, ah, aw) == (n, h, w) && (ac == c || ac == 1) => Ok(ac),
        [an, ah, aw] if (an, ah, aw) == (n, h, w) => Ok(1),
        _ => Err(Error::invalid_parameter(
            "attributions",
            format!(
                "shape {attributions:?} does not fit the input {input:?}: the metrics need attributions shaped like \
                 the input, or pooled over channels ([N, H, W] or [N, 1, H, W]); layer attributions cannot be scored"
            ),
        )),
    }
}

/// Scores `attributions` of `input` ([N, C, H, W], normalised) with every metric of
/// `request`, blocking until done. The browser awaits [`evaluate_async`] instead.
#[cfg(not(target_arch = "wasm32"))]
pub fn evaluate(
    model: &Model,
    input: &HostTensor,
    attributions: &HostTensor,
    request: &EvaluationRequest,
    progress: &mut Progress<'_>,
) -> Result<Evaluation> {
    pollster::block_on(evaluate_async(model, input, attributions, request, progress))
}

/// [`evaluate`] as a future.
pub async fn evaluate_async(
    model: &Model,
    input: &HostTensor,
    attributions: &HostTensor,
    request: &EvaluationRequest,
    progress: &mut Progress<'_>,
) -> Result<Evaluation> {
    for metric in &request.metrics {
        metric.validate()?;
        if metric.needs_method() && request.explainer.is_none() {
            return Err(Error::invalid_parameter(
                metric.name(),
                "explains perturbed inputs: name the method that made the attributions",
            ));
        }
    }
    let host_input = model.check_input(input)?;
    let mut channels = attribution_channels(host_input.dims(), attributions.dims())?;
    let mut attribution_values = attributions
        .to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    if request.pooling != Pooling::None && channels > 1 {
        attribution_values = request.pooling.apply(&attribution_values, host_input.dim(0)?, channels);
        channels = 1;
    }
    if let Some(bad) = attribution_values.iter().position(|v| !v.is_finite()) {
        return Err(Error::invalid_parameter(
            "attributions",
            format!(
                "value {bad} is {}: only finite attributions can be scored",
                attribution_values[bad]
            ),
        ));
    }
    // The clean forward gives the top-1 targets and the scores pixel flipping and MuFidelity
    // start from. Complexity never touches the model, and Sensitivity and the sanity check
    // explain for themselves: with the targets given, they skip it.
    let (batch, c, h, w) = host_input.dims4()?;
    let num_classes = model
        .graph()
        .output_dims(host_input.dims())
        .and_then(|dims| dims.last().copied());
    let needs_clean_scores = request
        .metrics
        .iter()
        .any(|m| m.flipping().is_some() || matches!(m, Metric::MuFidelity(_)));
    let (logits, targets, widest_row) = match num_classes {
        Some(classes) if !needs_clean_scores && matches!(request.targets, Targets::Classes(_)) => {
            (None, request.targets.given(batch, classes)?, 0)
        }
        _ => {
            model.check_forward_memory(host_input.dims())?;
            let clean = model.device().upload(&host_input)?;
            // The graph the perturbed rows run on (metrics/forward.rs): the same values, fewer passes.
            let (logits, widest_row) = model.fused_graph()?.predict_sized(&clean)?;
            let logits = logits.to_host_async().await?;
            let targets = request.targets.resolve(&logits)?;
            (Some(logits.to_vec2::<f32>()?), targets, widest_row)
        }
    };
    let samples = Samples {
        input: host_input.flatten_all()?.to_vec1::<f32>()?,
        dims: (c, h, w),
        attributions: attribution_values,
        attribution_channels: channels,
        pooling: request.pooling,
        targets: &targets,
        logits,
    };
    let rows = |batch_size: Option<usize>| Rows {
        model,
        row_dims: [c, h, w],
        widest_row,
        rows_per_pass: batch_size,
        memory_limit: request.memory_limit,
    };
    // Metrics that flip pixels with the same parameters share one set of curves.
    let mut flipped: Vec<(PixelFlippingParams, Vec<Order>, Vec<Curves>)> = Vec::new();
    for metric in &request.metrics {
        if let Some((params, orders)) = metric.flipping() {
            match flipped.iter_mut().find(|(p, ..)| p == params) {
                Some((_, wanted, _)) => {
                    for &order in orders {
                        if !wanted.contains(&order) {
                            wanted.push(order);
                        }
                    }
                }
                None => flipped.push((params.clone(), orders.to_vec(), Vec::new())),
            }
        }
    }
    for (params, orders, curves) in &mut flipped {
        *curves = pixel_flipping::curves(&samples, &rows(params.batch_size), params, orders, progress).await?;
    }
    let curves_of = |params: &PixelFlippingParams, order: Order| -> Curves {
        let (_, orders, curves) = flipped.iter().find(|(p, ..)| p == params).expect("computed above");
        curves[orders.iter().position(|&o| o == order).expect("asked for")].clone()
    };
    let mut scores = Vec::with_capacity(request.metrics.len());
    for metric in &request.metrics {
        let (mut morf_curves, mut lerf_curves, mut randomisation_curve) = (None, None, None);
        let values = match metric {
            Metric::Morf(p) => {
                let morf = curves_of(p, Order::Descending);
                let values = morf.iter().map(|c| mean(c)).collect();
                morf_curves = Some(morf);
                values
            }
            Metric::Lerf(p) => {
                let lerf = curves_of(p, Order::Ascending);
                let values = lerf.iter().map(|c| mean(c)).collect();
                lerf_curves = Some(lerf);
                values
            }
            Metric::Abpc(p) => {
                let (morf, lerf) = (
                    curves_of(&p.flipping, Order::Descending),
                    curves_of(&p.flipping, Order::Ascending),
                );
                let values = lerf.iter().zip(&morf).map(|(a, d)| area_between(a, d, p.lb)).collect();
                (morf_curves, lerf_curves) = (Some(morf), Some(lerf));
                values
            }
            Metric::MuFidelity(p) => mu_fidelity::mu_fidelity(&samples, &rows(p.batch_size), p, progress).await?,
            Metric::Sensitivity(p) => {
                let explainer = request.explainer.as_ref().expect("checked above");
                sensitivity::sensitivity(model, &samples, explainer, p, progress).await?
            }
            Metric::Complexity(p) => complexity::complexity(&samples, p)?,
            Metric::Randomisation(p) => {
                let explainer = request.explainer.as_ref().expect("checked above");
                let (values, curve) =
                    randomisation::randomisation(model, &samples, &host_input, explainer, p, progress).await?;
                randomisation_curve = Some(curve);
                values
            }
        };
        scores.push(Score {
            metric: metric.name().to_string(),
            higher_is_better: metric.higher_is_better(),
            values,
            morf_curves,
            lerf_curves,
            randomisation: randomisation_curve,
        });
    }
    Ok(Evaluation { targets, scores })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The defaults the catalog shows are the metrics' own: given back, they change nothing;
    /// and a number outside a parameter's range is refused, as forms built from it promise.
    #[test]
    fn catalog_defaults_are_the_metrics_defaults() {
        for info in Metric::catalog() {
            let given: serde_json::Map<String, Value> = info
                .parameters
                .iter()
                .filter(|p| !p.default.is_null())
                .map(|p| (p.parameter.key.to_string(), p.default.clone()))
                .collect();
            assert!(!given.is_empty(), "{}", info.name);
            let metric = Metric::from_json(info.name, &Value::Object(given)).unwrap();
            assert_eq!(metric, Metric::from_name(info.name).unwrap(), "{}", info.name);
            for p in info.parameters.iter().filter(|p| p.parameter.max.is_some()) {
                let too_large = serde_json::json!({ p.parameter.key: p.parameter.max.unwrap() * 2.0 + 1.0 });
                assert!(
                    Metric::from_json(info.name, &too_large).is_err(),
                    "{} {}",
                    info.name,
                    p.parameter.key
                );
            }
        }
    }
}
