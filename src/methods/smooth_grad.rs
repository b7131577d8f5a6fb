//! SmoothGrad (Smilkov et al. 2017): gradients averaged over noisy copies of the input.
//! Noise std is `noise_level * (max - min)` of each sample (pnpxai) unless an absolute
//! `stdev` is given (captum's NoiseTunnel `stdevs`). Also SmoothGrad-squared and VarGrad, as
//! captum's `nt_type` options.

use serde::{Deserialize, Serialize};

use super::probe::{unstack, Passes, Probe, Progress, Share, MAX_ROWS};
use super::{Attribution, Parameter, Scale};
use crate::backend::Map;
use crate::error::{Error, Result};
use crate::rng::SplitMix64;
use crate::tensor::Tensor;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", try_from = "String")]
pub enum Aggregate {
    /// mean of gradients (SmoothGrad)
    #[default]
    Mean,
    /// mean of squared gradients (SmoothGrad-squared)
    Squared,
    /// variance of gradients (VarGrad)
    Variance,
}

impl Aggregate {
    pub const ALL: [Aggregate; 3] = [Aggregate::Mean, Aggregate::Squared, Aggregate::Variance];

    pub fn name(self) -> &'static str {
        match self {
            Aggregate::Mean => "mean",
            Aggregate::Squared => "squared",
            Aggregate::Variance => "variance",
        }
    }
}

/// Any case; captum's `nt_type` names (`smoothgrad`, `smoothgrad_sq`, `vargrad`) too.
impl std::str::FromStr for Aggregate {
    type Err = Error;

    fn from_str(name: &str) -> Result<Self> {
        let name = match name.trim().replace('_', "-").to_ascii_lowercase().as_str() {
            "smoothgrad" => "mean",
            "smoothgrad-sq" => "squared",
            "vargrad" => "variance",
            _ => name,
        };
        Error::choose(name, "an aggregate", &Self::ALL, Self::name)
    }
}

impl TryFrom<String> for Aggregate {
    type Error = Error;

    fn try_from(name: String) -> Result<Self> {
        name.parse()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct SmoothGradParams {
    pub n_samples: usize,
    /// Noise std relative to each sample's value range (max - min).
    pub noise_level: f64,
    /// Absolute noise std; overrides `noise_level` when set.
    pub stdev: Option<f64>,
    pub seed: u64,
    pub aggregate: Aggregate,
    /// Absolute value of each noisy gradient before aggregating (captum Saliency's abs).
    pub abs: bool,
    /// Rows per forward/backward pass.
    pub batch_size: Option<usize>,
    /// Exact noise [N, n_samples, C, H, W] to use instead of drawing it (reproducing another
    /// tool's run).
    #[serde(skip)]
    pub noise: Option<candle_core::Tensor>,
}

impl Default for SmoothGradParams {
    fn default() -> Self {
        Self {
            n_samples: 20,
            noise_level: 0.1,
            stdev: None,
            seed: 0,
            aggregate: Aggregate::Mean,
            abs: false,
            batch_size: None,
            noise: None,
        }
    }
}

impl SmoothGradParams {
    pub(crate) fn parameters(&self) -> Vec<Parameter> {
        vec![
            Parameter::integer("n_samples", "Noisy samples", "number of noisy copies of the input")
                .at_least(1.0)
                .at_most(MAX_ROWS as f64)
                .tuned(Scale::Integer, 1.0, 100.0),
            Parameter::number(
                "noise_level",
                "Noise level (relative to the value range)",
                "noise std relative to each sample's value range, max - min (pnpxai)",
            )
            .at_least(0.0)
            .tuned(Scale::Linear, 0.0, 1.0),
            Parameter::number(
                "stdev",
                "Noise std (absolute)",
                "absolute noise std instead of noise_level (captum's stdevs)",
            )
            .at_least(0.0)
            .optional()
            .excludes("noise_level"),
            Parameter::integer("seed", "Seed", "seed of the noise"),
            Parameter::choice::<Aggregate>(
                "aggregate",
                "Aggregate",
                "mean (SmoothGrad), squared (SmoothGrad-squared) or variance (VarGrad) of the noisy gradients",
                Aggregate::ALL.map(Aggregate::name).to_vec(),
            ),
            Parameter::bool(
                "abs",
                "Absolute value",
                "absolute value of each noisy gradient before aggregating",
            ),
            Parameter::integer("batch_size", "Rows per pass", "noisy copies per forward/backward pass")
                .at_least(1.0)
                .at_most(MAX_ROWS as f64)
                .optional(),
        ]
    }

    pub fn validate(&self) -> Result<()> {
        if self.batch_size == Some(0) {
            return Err(Error::invalid_parameter("batch_size", "must be at least 1"));
        }
        if self.n_samples == 0 {
            return Err(Error::invalid_parameter("n_samples", "must be at least 1"));
        }
        let level = self.stdev.unwrap_or(self.noise_level);
        if !level.is_finite() || level < 0.0 {
            return Err(Error::invalid_parameter(
                if self.stdev.is_some() { "stdev" } else { "noise_level" },
                "must be a finite number >= 0",
            ));
        }
        Ok(())
    }

    /// Per-sample noise std, [N], from the input's host copy.
    fn stdevs(&self, input: &candle_core::Tensor) -> Result<Vec<f32>> {
        let n = input.dim(0)?;
        if let Some(s) = self.stdev {
            return Ok(vec![s as f32; n]);
        }
        let values = input.flatten_all()?.to_vec1::<f32>()?;
        let per_sample = values.len() / n;
        Ok(values
            .chunks(per_sample)
            .map(|sample| {
                let (low, high) = sample.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
                    (lo.min(v), hi.max(v))
                });
                // As candle's affine: the range times the level, in f32.
                (high - low) * self.noise_level as f32
            })
            .collect())
    }

    /// Noise for sample copy `i`: [N, C, H, W].
    fn noise_for(&self, i: usize, input: &Tensor, stdevs: &[f32]) -> Result<Tensor> {
        if let Some(noise) = &self.noise {
            return input.device().upload(&noise.narrow(1, i, 1)?.squeeze(1)?);
        }
        let per_sample = input.elem_count() / input.dim(0)?;
        let mut values = Vec::with_capacity(input.elem_count());
        for (b, std) in stdevs.iter().enumerate() {
            // One stream per (seed, copy, sample): the same noise whatever the batching.
            let mut rng = SplitMix64::new(self.seed ^ ((i as u64) << 32) ^ (b as u64).wrapping_mul(0x9E37_79B9));
            values.extend(rng.normals(per_sample).into_iter().map(|z| z * std));
        }
        input.device().tensor(&values, input.dims())
    }
}

pub(crate) async fn smooth_grad(
    probe: &Probe<'_>,
    input: &Tensor,
    host_input: &candle_core::Tensor,
    params: &SmoothGradParams,
    share: Option<Share>,
    progress: &mut Progress<'_>,
) -> Result<Attribution> {
    if let Some(noise) = &params.noise {
        let mut expected = input.dims().to_vec();
        expected.insert(1, params.n_samples);
        if noise.dims() != expected.as_slice() {
            return Err(Error::invalid_parameter(
                "noise",
                format!("shape {:?}, expected {expected:?}", noise.dims()),
            ));
        }
    }
    let stdevs = params.stdevs(host_input)?;
    let batch = probe.batch();
    let mut sum: Option<Tensor> = None;
    let mut sum_sq: Option<Tensor> = None;
    let accumulate = |acc: &mut Option<Tensor>, t: Tensor| -> Result<()> {
        *acc = Some(match acc.take() {
            Some(a) => a.add(&t)?,
            None => t,
        });
        Ok(())
    };
    let rows = Share::rows(share, params.n_samples);
    let mut passes = Passes::new(rows, params.batch_size, probe, progress);
    while let Some(copies) = passes.next().await? {
        let noisy = copies
            .iter()
            .map(|&i| input.add(&params.noise_for(i, input, &stdevs)?))
            .collect::<Result<Vec<_>>>()?;
        let pass = probe.run(&Tensor::cat_rows(&noisy)?, None)?;
        for g in unstack(&pass.gradient, batch)? {
            let g = if params.abs { g.map(Map::Abs)? } else { g };
            accumulate(&mut sum_sq, g.map(Map::Sqr)?)?;
            accumulate(&mut sum, g)?;
        }
    }
    // Divided by all the copies, not the share's: the shares' means add up to the whole's.
    let n = params.n_samples as f64;
    let mean = sum.expect("every share has at least one copy").affine(1.0 / n, 0.0)?;
    let mean_sq = sum_sq
        .expect("every share has at least one copy")
        .affine(1.0 / n, 0.0)?;
    let attributions = match params.aggregate {
        Aggregate::Mean => mean,
        Aggregate::Squared => mean_sq,
        Aggregate::Variance => mean_sq.sub(&mean.map(Map::Sqr)?)?,
    };
    Ok(Attribution {
        attributions,
        convergence_delta: None,
    })
}
