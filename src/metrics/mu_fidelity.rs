//! MuFidelity (Bhatt et al. 2020, as pnpxai's `MuFidelity`): random subsets of a coarse grid
//! are reset to a baseline in noisy copies of the input; the Spearman correlation between the
//! drop of the target logit and the attribution summed over each subset (higher is better).
//!
//! As pnpxai: the copies get Gaussian noise scaled by the mean and the unbiased std of the
//! input, `noise_scale * (z * std + mean)`, and are clamped so a value only decreases, by at
//! most 1; a grid cell stays when its rank in a row of normal draws exceeds
//! `int(grid_size² * noise_scale)`, so that many + 1 cells are reset; the grid is resized
//! to the input by nearest neighbour; the scores are logits, not probabilities.

use serde::{Deserialize, Serialize};

use super::forward::Rows;
use super::stats::spearman;
use super::{Samples, MAX_PERTURBATIONS};
use crate::error::{Error, Result};
use crate::methods::{Parameter, Progress};
use crate::rng::{SplitMix64, Stream};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MuFidelityParams {
    /// Perturbed copies per sample.
    pub n_perturb: usize,
    /// Scale of the noise, and the fraction of grid cells reset.
    pub noise_scale: f64,
    /// Cells per side of the grid the subsets are drawn on.
    pub grid_size: usize,
    /// The value reset cells take (in the model's input space).
    pub baseline: f64,
    /// Perturbed copies per forward pass.
    pub batch_size: Option<usize>,
    pub seed: u64,
}

impl Default for MuFidelityParams {
    fn default() -> Self {
        Self {
            n_perturb: 150,
            noise_scale: 0.2,
            grid_size: 9,
            baseline: 0.0,
            batch_size: None,
            seed: 0,
        }
    }
}

impl MuFidelityParams {
    pub(crate) fn parameters(&self) -> Vec<Parameter> {
        vec![
            Parameter::integer("n_perturb", "Perturbations", "perturbed copies of each input")
                .at_least(2.0)
                .at_most(MAX_PERTURBATIONS as f64),
            Parameter::number(
                "noise_scale",
                "Noise scale",
                "scale of the Gaussian noise, and the fraction of grid cells reset",
            )
            .at_least(0.0)
            .at_most(1.0),
            Parameter::integer(
                "grid_size",
                "Grid size",
                "cells per side of the grid the reset subsets are drawn on",
            )
            .at_least(1.0)
            .at_most(1024.0),
            Parameter::number(
                "baseline",
                "Baseline",
                "the value reset cells are set to, in the model's input space",
            ),
            Parameter::integer("batch_size", "Rows per pass", "perturbed inputs per forward pass")
                .at_least(1.0)
                .at_most(MAX_PERTURBATIONS as f64)
                .optional(),
            Parameter::integer("seed", "Seed", "seed of the noise and the subsets"),
        ]
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if !self.baseline.is_finite() {
            return Err(Error::invalid_parameter("baseline", "must be a finite number"));
        }
        Ok(())
    }

    /// Grid cells reset in each copy.
    fn reset_cells(&self) -> usize {
        let cells = self.grid_size * self.grid_size;
        ((cells as f64 * self.noise_scale) as usize + 1).min(cells)
    }

    /// Which grid cells each copy of sample `b` keeps: [n_perturb][grid²].
    fn kept_cells(&self, b: usize) -> Vec<Vec<bool>> {
        let cells = self.grid_size * self.grid_size;
        let draws = SplitMix64::stream(self.seed, Stream::MuFidelitySubsets, b).normals(self.n_perturb * cells);
        let threshold = self.reset_cells() - 1;
        draws
            .chunks(cells)
            .map(|scores| {
                let mut order: Vec<usize> = (0..cells).collect();
                order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
                // pnpxai keeps position j when argsort(scores)[j] > threshold.
                order.iter().map(|&source| source > threshold).collect()
            })
            .collect()
    }
}

/// One MuFidelity value per sample.
pub(crate) async fn mu_fidelity(
    samples: &Samples<'_>,
    rows: &Rows<'_>,
    params: &MuFidelityParams,
    progress: &mut Progress<'_>,
) -> Result<Vec<f64>> {
    let (_, h, w) = samples.dims();
    let g = params.grid_size;
    // The grid cell of each pixel (nearest-neighbour resize of the g x g grid to h x w).
    let (ratio_h, ratio_w) = (g as f32 / h as f32, g as f32 / w as f32);
    let cell_of_pixel: Vec<usize> = (0..h * w)
        .map(|p| {
            let (y, x) = (p / w, p % w);
            crate::layers::nearest_source(y, ratio_h, g) * g + crate::layers::nearest_source(x, ratio_w, g)
        })
        .collect();
    let mut values = Vec::with_capacity(samples.len());
    for b in 0..samples.len() {
        let input = samples.input(b);
        let kept = params.kept_cells(b);
        let noise = SplitMix64::stream(params.seed, Stream::MuFidelityNoise, b).normals(params.n_perturb * input.len());
        let (mean, std) = repeated_mean_std(input, params.n_perturb);
        let scale = params.noise_scale as f32;
        let baseline = params.baseline as f32;
        let pixels = h * w;
        let mut make = |i: usize, row: &mut [f32]| -> Result<()> {
            let z = &noise[i * input.len()..(i + 1) * input.len()];
            for (e, out) in row.iter_mut().enumerate() {
                let x = input[e];
                let perturbed = (scale * (z[e] * std + mean) + x).min(x).max(x - 1.0);
                *out = match kept[i][cell_of_pixel[e % pixels]] {
                    true => perturbed,
                    false => baseline,
                };
            }
            Ok(())
        };
        let logits = rows.logits(params.n_perturb, &mut make, progress).await?;
        let target = samples.target(b);
        let logit = samples.logit(b) as f64;
        let drops: Vec<f64> = logits.iter().map(|l| logit - l[target] as f64).collect();
        let per_pixel = samples.pixel_attributions(b);
        let reset_sums: Vec<f64> = kept
            .iter()
            .map(|cells| {
                (0..pixels)
                    .filter(|&p| !cells[cell_of_pixel[p]])
                    .map(|p| per_pixel[p])
                    .sum()
            })
            .collect();
        values.push(spearman(&drops, &reset_sums));
    }
    Ok(values)
}

/// torch.std_mean over `copies` stacked copies of `x`: the mean of `x` and the unbiased std
/// over all copies' elements, as float32.
fn repeated_mean_std(x: &[f32], copies: usize) -> (f32, f32) {
    let n = x.len() as f64;
    let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n;
    let squares: f64 = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum();
    let total = n * copies as f64;
    let std = (squares * copies as f64 / (total - 1.0).max(1.0)).sqrt();
    (mean as f32, std as f32)
}
