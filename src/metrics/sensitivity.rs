//! Max-sensitivity (as pnpxai's `Sensitivity`): the method explains `n_iter` copies of each
//! input with uniform noise in [-epsilon, epsilon]; the largest Frobenius distance of their
//! explanations from the original's, relative to the original's norm (lower is better).

use candle_core::Tensor as HostTensor;
use serde::{Deserialize, Serialize};

use super::{Samples, MAX_PERTURBATIONS};
use crate::error::{Error, Result};
use crate::methods::{explain_async, Parameter, Progress, Request, Targets};
use crate::model::Model;
use crate::rng::{SplitMix64, Stream};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SensitivityParams {
    /// Noisy copies explained per sample.
    pub n_iter: usize,
    /// Half-width of the uniform noise.
    pub epsilon: f64,
    pub seed: u64,
}

impl Default for SensitivityParams {
    fn default() -> Self {
        Self {
            n_iter: 8,
            epsilon: 0.2,
            seed: 0,
        }
    }
}

impl SensitivityParams {
    pub(crate) fn parameters(&self) -> Vec<Parameter> {
        vec![
            Parameter::integer("n_iter", "Noisy copies", "noisy copies of each input explained")
                .at_least(1.0)
                .at_most(MAX_PERTURBATIONS as f64),
            Parameter::number("epsilon", "Noise", "half-width of the uniform noise added to the input").at_least(0.0),
            Parameter::integer("seed", "Seed", "seed of the noise"),
        ]
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if !self.epsilon.is_finite() {
            return Err(Error::invalid_parameter("epsilon", "must be a finite number"));
        }
        Ok(())
    }
}

/// One max-sensitivity value per sample; `explainer` makes the explanations of the noisy
/// copies (its targets are the samples').
pub(crate) async fn sensitivity(
    model: &Model,
    samples: &Samples<'_>,
    explainer: &Request,
    params: &SensitivityParams,
    progress: &mut Progress<'_>,
) -> Result<Vec<f64>> {
    let (c, h, w) = samples.dims();
    let epsilon = params.epsilon as f32;
    let mut values = Vec::with_capacity(samples.len());
    for b in 0..samples.len() {
        progress.report(b, samples.len())?;
        let input = samples.input(b);
        let mut rng = SplitMix64::stream(params.seed, Stream::SensitivityNoise, b);
        let noisy: Vec<f32> = (0..params.n_iter)
            .flat_map(|_| input.iter())
            .map(|&x| x + ((rng.uniform() as f32 * epsilon) * 2.0 - epsilon))
            .collect();
        let noisy = HostTensor::from_vec(noisy, (params.n_iter, c, h, w), &candle_core::Device::Cpu)?;
        let request = Request {
            targets: Targets::Classes(vec![samples.target(b) as i64]),
            ..explainer.clone()
        };
        let explained = explain_async(model, &noisy, &request, &mut Progress::none()).await?;
        let original = samples.attribution(b);
        let perturbed = samples.pooled(explained.attributions.flatten_all()?.to_vec1::<f32>()?, params.n_iter);
        if perturbed.len() != original.len() * params.n_iter {
            return Err(Error::invalid_parameter(
                "attributions",
                format!(
                    "{} values per sample, but {} explains {} per sample: give the method that made the attributions",
                    original.len(),
                    explainer.method.name(),
                    perturbed.len() / params.n_iter
                ),
            ));
        }
        let norm = original.iter().map(|&a| (a as f64).powi(2)).sum::<f64>().sqrt();
        let largest = perturbed
            .chunks(original.len())
            .map(|p| {
                let distance = p
                    .iter()
                    .zip(original)
                    .map(|(&q, &a)| (a as f64 - q as f64).powi(2))
                    .sum::<f64>();
                distance.sqrt() / norm
            })
            .fold(f64::NEG_INFINITY, f64::max);
        values.push(largest);
    }
    progress.report(samples.len(), samples.len())?;
    Ok(values)
}
