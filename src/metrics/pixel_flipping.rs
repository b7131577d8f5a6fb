//! Pixel flipping (pnpxai's `PixelFlipping`, `MoRF`, `LeRF`, `AbPC`): the features are reset to
//! a baseline in the order of their attribution, in `n_steps` steps, and the target's softmax
//! probability is read after each step. MoRF (most relevant first; lower is better) and LeRF
//! (least relevant first; higher is better) average their curve; AbPC averages LeRF - MoRF,
//! each step clamped from below at `lb` (higher is better).
//!
//! As pnpxai: the order is a stable sort (ties keep the features' order), every step flips
//! `features / n_steps` more (at least one), the last step flips them all, and the curve has
//! `n_steps` points, the unperturbed input first.

use serde::{Deserialize, Serialize};

use super::forward::Rows;
use super::{Samples, MAX_PERTURBATIONS};
use crate::error::{Error, Result};
use crate::methods::{Parameter, Progress};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PixelFlippingParams {
    /// Points on the curve, the unperturbed input included.
    pub n_steps: usize,
    /// The value a flipped feature is set to (in the model's input space).
    pub baseline: f64,
    /// Perturbed inputs per forward pass.
    pub batch_size: Option<usize>,
}

impl Default for PixelFlippingParams {
    fn default() -> Self {
        Self {
            n_steps: 10,
            baseline: 0.0,
            batch_size: None,
        }
    }
}

impl PixelFlippingParams {
    pub(crate) fn parameters(&self) -> Vec<Parameter> {
        vec![
            Parameter::integer(
                "n_steps",
                "Steps",
                "points on the flipping curve, the unperturbed input first",
            )
            .at_least(2.0)
            .at_most(MAX_PERTURBATIONS as f64),
            Parameter::number(
                "baseline",
                "Baseline",
                "the value flipped features are set to, in the model's input space",
            ),
            Parameter::integer("batch_size", "Rows per pass", "perturbed inputs per forward pass")
                .at_least(1.0)
                .at_most(MAX_PERTURBATIONS as f64)
                .optional(),
        ]
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if !self.baseline.is_finite() {
            return Err(Error::invalid_parameter("baseline", "must be a finite number"));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AbpcParams {
    #[serde(flatten)]
    pub flipping: PixelFlippingParams,
    /// Lower bound of each step's LeRF - MoRF difference.
    pub lb: f64,
}

impl Default for AbpcParams {
    fn default() -> Self {
        Self {
            flipping: PixelFlippingParams::default(),
            lb: -1.0,
        }
    }
}

impl AbpcParams {
    pub(crate) fn parameters(&self) -> Vec<Parameter> {
        let mut parameters = self.flipping.parameters();
        parameters.push(Parameter::number(
            "lb",
            "Lower bound",
            "each step's LeRF - MoRF probability difference is clamped from below at this value",
        ));
        parameters
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.lb.is_nan() {
            return Err(Error::invalid_parameter("lb", "must be a number"));
        }
        self.flipping.validate()
    }
}

/// Which end of the attribution order goes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Most relevant first (MoRF).
    Descending,
    /// Least relevant first (LeRF).
    Ascending,
}

/// The target's probability after each step, per sample: [N][n_steps].
pub type Curves = Vec<Vec<f64>>;

/// The flipping curves of `samples` in each of `orders`, all perturbed inputs batched.
pub(crate) async fn curves(
    samples: &Samples<'_>,
    rows: &Rows<'_>,
    params: &PixelFlippingParams,
    orders: &[Order],
    progress: &mut Progress<'_>,
) -> Result<Vec<Curves>> {
    let features = samples.features();
    // The features flipped after each step s = 1..n_steps (the last: all of them).
    let per_step = (features / params.n_steps).max(1);
    let flipped: Vec<usize> = (1..params.n_steps)
        .map(|s| match s + 1 == params.n_steps {
            true => features,
            false => (per_step * s).min(features),
        })
        .collect();
    let sorted: Vec<Vec<Vec<usize>>> = orders
        .iter()
        .map(|&order| {
            (0..samples.len())
                .map(|b| sorted_features(samples.attribution(b), order))
                .collect()
        })
        .collect();
    let steps = flipped.len();
    let per_order = samples.len() * steps;
    let baseline = params.baseline as f32;
    let mut make = |r: usize, row: &mut [f32]| -> Result<()> {
        let (o, b, s) = (r / per_order, r % per_order / steps, r % steps);
        row.copy_from_slice(samples.input(b));
        for &feature in &sorted[o][b][..flipped[s]] {
            samples.for_each_element(feature, |i| row[i] = baseline);
        }
        Ok(())
    };
    let logits = rows.logits(orders.len() * per_order, &mut make, progress).await?;
    Ok((0..orders.len())
        .map(|o| {
            (0..samples.len())
                .map(|b| {
                    let mut curve = vec![samples.probability(b)];
                    let first = o * per_order + b * steps;
                    curve.extend(
                        logits[first..first + steps]
                            .iter()
                            .map(|l| softmax_at(l, samples.target(b))),
                    );
                    curve
                })
                .collect()
        })
        .collect())
}

/// Feature indices by attribution, stably (equal values keep their order; -0 equals 0).
fn sorted_features(attribution: &[f32], order: Order) -> Vec<usize> {
    let mut indices: Vec<usize> = (0..attribution.len()).collect();
    let by_value = |a: &usize, b: &usize| attribution[*a].total_cmp(&attribution[*b]);
    let by_value_zero_equal = |a: &usize, b: &usize| match attribution[*a] == attribution[*b] {
        true => std::cmp::Ordering::Equal,
        false => by_value(a, b),
    };
    match order {
        Order::Ascending => indices.sort_by(by_value_zero_equal),
        Order::Descending => indices.sort_by(|a, b| by_value_zero_equal(b, a)),
    }
    indices
}

/// The softmax probability of class `target` from float32 logits, in float64.
pub(crate) fn softmax_at(logits: &[f32], target: usize) -> f64 {
    let max = logits.iter().fold(f64::NEG_INFINITY, |m, &l| m.max(l as f64));
    let total: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    (logits[target] as f64 - max).exp() / total
}

pub(crate) fn mean(curve: &[f64]) -> f64 {
    curve.iter().sum::<f64>() / curve.len() as f64
}

/// AbPC of one sample from its two curves.
pub(crate) fn area_between(lerf: &[f64], morf: &[f64], lb: f64) -> f64 {
    let clamped: Vec<f64> = lerf.iter().zip(morf).map(|(a, d)| (a - d).max(lb)).collect();
    mean(&clamped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ties_keep_their_order_both_ways() {
        let a = [1.0, 0.0, 1.0, -0.0, 2.0];
        assert_eq!(sorted_features(&a, Order::Descending), vec![4, 0, 2, 1, 3]);
        assert_eq!(sorted_features(&a, Order::Ascending), vec![1, 3, 0, 2, 4]);
    }
}
