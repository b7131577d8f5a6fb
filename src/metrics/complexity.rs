//! Complexity (Bhatt et al. 2020, as pnpxai's `Complexity`): the entropy of the histogram of
//! the attributions, three channels first converted to grey (lower is better: relevance on
//! fewer values).

use serde::{Deserialize, Serialize};

use super::stats::{entropy, histogram};
use super::Samples;
use crate::error::{Error, Result};
use crate::methods::Parameter;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ComplexityParams {
    /// Bins of the histogram.
    pub n_bins: usize,
}

impl Default for ComplexityParams {
    fn default() -> Self {
        Self { n_bins: 10 }
    }
}

impl ComplexityParams {
    pub(crate) fn parameters(&self) -> Vec<Parameter> {
        vec![
            Parameter::integer("n_bins", "Bins", "bins of the attribution histogram")
                .at_least(1.0)
                .at_most(1e6),
        ]
    }
}

/// One entropy per sample.
pub(crate) fn complexity(samples: &Samples<'_>, params: &ComplexityParams) -> Result<Vec<f64>> {
    (0..samples.len())
        .map(|b| {
            let grey = grey(samples.attribution(b), samples.attribution_channels())?;
            Ok(entropy(&histogram(&grey, params.n_bins)))
        })
        .collect()
}

/// torchvision's `rgb_to_grayscale` (0.2989 R + 0.587 G + 0.114 B, in float32) for three
/// channels; one channel (or channel-pooled attributions) as it is.
fn grey(attribution: &[f32], channels: usize) -> Result<Vec<f32>> {
    match channels {
        1 => Ok(attribution.to_vec()),
        3 => {
            let plane = attribution.len() / 3;
            let (r, rest) = attribution.split_at(plane);
            let (g, b) = rest.split_at(plane);
            Ok((0..plane)
                .map(|i| 0.2989f32 * r[i] + 0.587f32 * g[i] + 0.114f32 * b[i])
                .collect())
        }
        n => Err(Error::invalid_parameter(
            "attributions",
            format!("complexity needs attributions of 1 or 3 channels (grey or RGB), not {n}"),
        )),
    }
}
