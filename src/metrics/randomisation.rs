//! The model-parameter randomisation sanity check (Adebayo et al. 2018, as Quantus' `MPRT`):
//! the layers' parameters are drawn afresh from the top (the output) down, one layer more at
//! each step, and the explanation of the randomised model is compared with the original one.
//! An explanation that stays similar once the weights are random does not depend on what the
//! model learned. The score per sample is the similarity once every layer is randomised
//! (Quantus' `return_last_correlation`; lower is better); the curve along the way is kept.
//!
//! As Quantus: the layers are those with parameters (convolution, linear, BatchNorm,
//! LayerNorm), reset as PyTorch's `reset_parameters` ([`crate::layers::Op::reset_parameters`]);
//! both explanations are made absolute and scaled by their largest value (each sample on its
//! own) and compared flattened, by Spearman's rank correlation or SSIM (skimage's, 7-wide
//! window).

use candle_core::Tensor as HostTensor;
use serde::{Deserialize, Serialize};

use super::stats::{spearman, ssim};
use super::{Samples, MAX_PERTURBATIONS};
use crate::error::{Error, Result};
use crate::graph::NodeId;
use crate::methods::{explain_async, Parameter, Progress, Request, Targets};
use crate::model::Model;
use crate::rng::{SplitMix64, Stream};

/// How two explanations are compared.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", try_from = "String")]
pub enum Similarity {
    /// Spearman's rank correlation of the flattened explanations.
    #[default]
    Spearman,
    /// Structural similarity (skimage, 7-wide uniform window) of the flattened explanations.
    Ssim,
}

impl Similarity {
    pub const ALL: [Similarity; 2] = [Similarity::Spearman, Similarity::Ssim];

    pub fn name(self) -> &'static str {
        match self {
            Similarity::Spearman => "spearman",
            Similarity::Ssim => "ssim",
        }
    }

    fn between(self, a: &[f64], b: &[f64]) -> f64 {
        match self {
            Similarity::Spearman => spearman(a, b),
            Similarity::Ssim => ssim(a, b),
        }
    }
}

impl TryFrom<String> for Similarity {
    type Error = Error;

    fn try_from(name: String) -> Result<Self> {
        Error::choose(&name.to_ascii_lowercase(), "a similarity", &Self::ALL, Self::name)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RandomisationParams {
    pub similarity: Similarity,
    /// Absolute values before comparing (Quantus' default).
    pub abs: bool,
    /// Seed of the random parameters.
    pub seed: u64,
    /// Explanations made along the way: after evenly spaced numbers of randomised layers, the
    /// last after all of them; 0 = after every layer (Quantus' full curve).
    pub checkpoints: usize,
}

impl Default for RandomisationParams {
    fn default() -> Self {
        Self {
            similarity: Similarity::Spearman,
            abs: true,
            seed: 42,
            checkpoints: 8,
        }
    }
}

impl RandomisationParams {
    pub(crate) fn parameters(&self) -> Vec<Parameter> {
        vec![
            Parameter::choice::<Similarity>(
                "similarity",
                "Similarity",
                "spearman (rank correlation) or ssim (structural similarity) of the two explanations",
                Similarity::ALL.map(Similarity::name).to_vec(),
            ),
            Parameter::bool("abs", "Absolute value", "compare absolute attributions (Quantus' default)"),
            Parameter::integer("seed", "Seed", "seed of the random parameters"),
            Parameter::integer(
                "checkpoints",
                "Checkpoints",
                "explanations along the way, evenly spaced, the last with every layer randomised; 0 = after every layer",
            )
            .at_most(MAX_PERTURBATIONS as f64),
        ]
    }
}

/// The similarity after each checkpoint: which layer was randomised last, how many layers
/// are random by then, and the similarity per sample.
#[derive(Debug, Clone, Serialize)]
pub struct RandomisationCurve {
    pub layers: Vec<String>,
    pub randomised: Vec<usize>,
    /// [checkpoint][sample]
    pub similarity: Vec<Vec<f64>>,
}

/// The similarity per sample once every layer is random, and the curve on the way there.
pub(crate) async fn randomisation(
    model: &Model,
    samples: &Samples<'_>,
    host_input: &HostTensor,
    explainer: &Request,
    params: &RandomisationParams,
    progress: &mut Progress<'_>,
) -> Result<(Vec<f64>, RandomisationCurve)> {
    let original: Vec<Vec<f64>> = (0..samples.len())
        .map(|b| prepared(samples.attribution(b), params.abs))
        .collect();
    let graph = model.graph();
    // Top down: the output's layer first.
    let layers: Vec<NodeId> = (1..graph.nodes().len())
        .rev()
        .filter(|&id| graph.node(id).op.has_parameters())
        .collect();
    if layers.is_empty() {
        return Err(Error::invalid_parameter(
            "randomisation",
            "the model has no layer with parameters to randomise",
        ));
    }
    let checkpoints = checkpoint_counts(layers.len(), params.checkpoints);
    let request = Request {
        targets: Targets::Classes((0..samples.len()).map(|b| samples.target(b) as i64).collect()),
        ..explainer.clone()
    };
    let mut curve = RandomisationCurve {
        layers: Vec::new(),
        randomised: Vec::new(),
        similarity: Vec::new(),
    };
    let mut randomised = graph.clone();
    for (position, &id) in layers.iter().enumerate() {
        let mut rng = SplitMix64::stream(params.seed, Stream::Randomisation, position);
        let op = randomised
            .node(id)
            .op
            .reset_parameters(&mut rng)?
            .expect("layers with parameters");
        randomised = randomised.with_op(id, op);
        let count = position + 1;
        if !checkpoints.contains(&count) {
            continue;
        }
        progress.report(curve.randomised.len(), checkpoints.len())?;
        let explained = explain_async(
            &model.with_graph(randomised.clone()),
            host_input,
            &request,
            &mut Progress::none(),
        )
        .await?;
        let values = samples.pooled(explained.attributions.flatten_all()?.to_vec1::<f32>()?, samples.len());
        let per_sample = values.len() / samples.len();
        if per_sample != samples.features() {
            return Err(Error::invalid_parameter(
                "attributions",
                format!(
                    "{} values per sample, but {} explains {per_sample}: give the method that made the attributions",
                    samples.features(),
                    explainer.method.name()
                ),
            ));
        }
        curve.layers.push(graph.node(id).name.clone());
        curve.randomised.push(count);
        curve.similarity.push(
            values
                .chunks(per_sample)
                .zip(&original)
                .map(|(random, original)| params.similarity.between(original, &prepared(random, params.abs)))
                .collect(),
        );
    }
    progress.report(checkpoints.len(), checkpoints.len())?;
    let last = curve.similarity.last().cloned().unwrap_or_default();
    Ok((last, curve))
}

/// After how many randomised layers (1-based) the explanations are compared: `wanted` evenly
/// spaced counts ending with all `layers` (every count when `wanted` is 0 or covers them).
fn checkpoint_counts(layers: usize, wanted: usize) -> Vec<usize> {
    if wanted == 0 || wanted >= layers {
        return (1..=layers).collect();
    }
    let mut counts: Vec<usize> = (1..=wanted).map(|j| (j * layers).div_ceil(wanted)).collect();
    counts.dedup();
    counts
}

/// An explanation as compared: absolute if asked, scaled by its largest magnitude.
fn prepared(values: &[f32], abs: bool) -> Vec<f64> {
    let values: Vec<f64> = values
        .iter()
        .map(|&v| if abs { (v as f64).abs() } else { v as f64 })
        .collect();
    let largest = values.iter().fold(0f64, |m, v| m.max(v.abs()));
    match largest > 0.0 {
        true => values.iter().map(|v| v / largest).collect(),
        false => values,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_end_with_every_layer() {
        assert_eq!(checkpoint_counts(105, 8), vec![14, 27, 40, 53, 66, 79, 92, 105]);
        assert_eq!(checkpoint_counts(3, 8), vec![1, 2, 3]);
        assert_eq!(checkpoint_counts(5, 0), vec![1, 2, 3, 4, 5]);
    }
}
