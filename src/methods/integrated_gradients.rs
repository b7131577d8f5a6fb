//! Integrated Gradients (Sundararajan et al. 2017) with captum's quadratures, at the input
//! or at a layer (captum's LayerIntegratedGradients: the layer's output is interpolated
//! between its values on the baseline and on the input, everything else sees the input).

use serde::{Deserialize, Serialize};

use super::baseline::Baseline;
use super::probe::{unstack, Passes, Probe, Progress, Share, MAX_ROWS};
use super::quadrature::Quadrature;
use super::{Attribution, Parameter, Scale};
use crate::backend::Reduce;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct IntegratedGradientsParams {
    pub n_steps: usize,
    pub quadrature: Quadrature,
    pub baseline: Baseline,
    /// Multiply the path-integrated gradient by (input - baseline); false gives the plain integral.
    pub multiply_by_inputs: bool,
    /// Rows per forward/backward pass (captum's internal_batch_size).
    pub batch_size: Option<usize>,
    /// The seed of a uniform-noise baseline (overrides the baseline's own).
    pub seed: Option<u64>,
}

impl Default for IntegratedGradientsParams {
    fn default() -> Self {
        Self {
            n_steps: 50,
            quadrature: Quadrature::GaussLegendre,
            baseline: Baseline::Zero,
            multiply_by_inputs: true,
            batch_size: None,
            seed: None,
        }
    }
}

impl IntegratedGradientsParams {
    pub(crate) fn parameters(&self) -> Vec<Parameter> {
        vec![
            Parameter::integer("n_steps", "Integration steps", "number of points on the path")
                .at_least(1.0)
                .at_most(MAX_ROWS as f64)
                .tuned(Scale::Integer, 10.0, 100.0),
            Parameter::choice::<Quadrature>(
                "quadrature",
                "Quadrature rule",
                "where the path is sampled and how the samples are weighted (captum's methods)",
                Quadrature::ALL.map(Quadrature::name).to_vec(),
            )
            .tuned(Scale::Choice, 0.0, 0.0),
            Parameter::text::<Baseline>("baseline", "Baseline", "where the path starts", Baseline::SYNTAX),
            Parameter::bool(
                "multiply_by_inputs",
                "Multiply by inputs",
                "multiply the path integral by (input - baseline); off gives the plain integral",
            ),
            Parameter::integer("batch_size", "Rows per pass", "path points per forward/backward pass")
                .at_least(1.0)
                .at_most(MAX_ROWS as f64)
                .optional(),
            Parameter::integer("seed", "Seed", "seed of a uniform-noise baseline").optional(),
        ]
    }

    pub fn validate(&self) -> Result<()> {
        if self.n_steps < self.quadrature.min_steps() {
            return Err(Error::invalid_parameter(
                "n_steps",
                format!(
                    "{} needs at least {} steps",
                    self.quadrature.name(),
                    self.quadrature.min_steps()
                ),
            ));
        }
        if self.batch_size == Some(0) {
            return Err(Error::invalid_parameter("batch_size", "must be at least 1"));
        }
        if self.seed.is_some() && !matches!(self.baseline, Baseline::UniformNoise { .. }) {
            return Err(Error::invalid_parameter(
                "seed",
                "integrated-gradients uses a seed only with a uniform-noise baseline (uniform:<low>:<high>)",
            ));
        }
        Ok(())
    }

    /// The baseline, with `seed` in place of a uniform-noise baseline's own.
    fn seeded_baseline(&self) -> Baseline {
        match (&self.baseline, self.seed) {
            (Baseline::UniformNoise { low, high, .. }, Some(seed)) => Baseline::UniformNoise {
                low: *low,
                high: *high,
                seed,
            },
            (baseline, _) => baseline.clone(),
        }
    }
}

pub(crate) async fn integrated_gradients(
    probe: &Probe<'_>,
    input: &Tensor,
    host_input: &candle_core::Tensor,
    input_logits: &Tensor,
    params: &IntegratedGradientsParams,
    share: Option<Share>,
    progress: &mut Progress<'_>,
) -> Result<Attribution> {
    let baseline = input
        .device()
        .upload(&params.seeded_baseline().for_input(host_input)?)?;
    let graph = probe.graph;
    let at_layer = probe.at != 0;
    // The path runs between these two values of node `at`.
    let (start, end, start_logits) = if at_layer {
        let on_input = graph.forward(input, None)?;
        let on_baseline = graph.forward(&baseline, None)?;
        (
            on_baseline.get(probe.at).clone(),
            on_input.get(probe.at).clone(),
            on_baseline.output().clone(),
        )
    } else {
        (baseline.clone(), input.clone(), graph.predict(&baseline)?)
    };
    let span = end.sub(&start)?;
    let (step_sizes, alphas) = params.quadrature.points(params.n_steps);
    let batch = probe.batch();
    let mut integral: Option<Tensor> = None;
    let rows = Share::rows(share, params.n_steps);
    let mut passes = Passes::new(rows, params.batch_size, probe, progress);
    while let Some(steps) = passes.next().await? {
        let points = steps
            .iter()
            .map(|&i| start.add(&span.affine(alphas[i], 0.0)?))
            .collect::<Result<Vec<_>>>()?;
        let points = Tensor::cat_rows(&points)?;
        let pass = if at_layer {
            let inputs = Tensor::cat_rows(&vec![input.clone(); steps.len()])?;
            probe.run(&inputs, Some(&points))?
        } else {
            probe.run(&points, None)?
        };
        for (&i, g) in steps.iter().zip(unstack(&pass.gradient, batch)?) {
            let weighted = g.affine(step_sizes[i], 0.0)?;
            integral = Some(match integral.take() {
                Some(acc) => acc.add(&weighted)?,
                None => weighted,
            });
        }
    }
    let integral = integral.expect("every share has at least one step");
    let attributions = if params.multiply_by_inputs {
        integral.mul(&span)?
    } else {
        integral
    };
    // captum's convergence delta: sum(attributions) - (f(input) - f(baseline)) at the target,
    // in f32 as captum computes it; a share carries its fraction of the score difference, so
    // that the shares' deltas add up to the whole's.
    let fraction = Share::fraction(share) as f32;
    let sums = attributions.reduce(Reduce::SumPerSample)?.to_vec_async().await?;
    let end_logits = input_logits.to_vec_async().await?;
    let start_logits = start_logits.to_vec_async().await?;
    let classes = input_logits.dim(1)?;
    let delta: Vec<f32> = probe
        .targets
        .iter()
        .enumerate()
        .map(|(row, &t)| sums[row] - fraction * (end_logits[row * classes + t] - start_logits[row * classes + t]))
        .collect();
    let delta = candle_core::Tensor::from_vec(delta, probe.targets.len(), &candle_core::Device::Cpu)?;
    Ok(Attribution {
        attributions,
        convergence_delta: Some(delta),
    })
}
