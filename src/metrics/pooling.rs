//! pnpxai's pooling of image attributions over the channels before they are scored or shown
//! (`PostProcessor`'s `pooling_method`): [N, C, H, W] to [N, H, W].

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", try_from = "String")]
pub enum Pooling {
    /// The attributions as they are (pnpxai's metric classes called directly).
    #[default]
    None,
    /// max(0, sum over channels)
    Sumpos,
    /// |sum over channels|
    Sumabs,
    /// sum of |a|
    L1norm,
    /// max of |a|
    Maxnorm,
    /// sqrt of the sum of squares
    L2norm,
    /// sum of squares
    L2normsq,
    /// sum of max(0, a)
    Possum,
    /// max of max(0, a)
    Posmaxnorm,
    /// sqrt of the sum of max(0, a)²
    Posl2norm,
    /// sum of max(0, a)²
    Posl2normsq,
}

impl Pooling {
    pub const ALL: [Pooling; 11] = [
        Pooling::None,
        Pooling::Sumpos,
        Pooling::Sumabs,
        Pooling::L1norm,
        Pooling::Maxnorm,
        Pooling::L2norm,
        Pooling::L2normsq,
        Pooling::Possum,
        Pooling::Posmaxnorm,
        Pooling::Posl2norm,
        Pooling::Posl2normsq,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Pooling::None => "none",
            Pooling::Sumpos => "sumpos",
            Pooling::Sumabs => "sumabs",
            Pooling::L1norm => "l1norm",
            Pooling::Maxnorm => "maxnorm",
            Pooling::L2norm => "l2norm",
            Pooling::L2normsq => "l2normsq",
            Pooling::Possum => "possum",
            Pooling::Posmaxnorm => "posmaxnorm",
            Pooling::Posl2norm => "posl2norm",
            Pooling::Posl2normsq => "posl2normsq",
        }
    }

    /// Pools `values` ([samples, channels, pixels] flat) to [samples, pixels], in float32 as
    /// PyTorch does (`None`: unchanged).
    pub fn apply(self, values: &[f32], samples: usize, channels: usize) -> Vec<f32> {
        if self == Pooling::None || samples == 0 || channels == 0 {
            return values.to_vec();
        }
        fn positive(v: f32) -> f32 {
            v.max(0.0)
        }
        let (map, max): (fn(f32) -> f32, bool) = match self {
            Pooling::None => unreachable!("returned above"),
            Pooling::Sumpos | Pooling::Sumabs => (|v| v, false),
            Pooling::L1norm => (f32::abs, false),
            Pooling::Maxnorm => (f32::abs, true),
            Pooling::L2norm | Pooling::L2normsq => (|v| v * v, false),
            Pooling::Possum => (positive, false),
            Pooling::Posmaxnorm => (positive, true),
            Pooling::Posl2norm | Pooling::Posl2normsq => (|v| positive(v) * positive(v), false),
        };
        let finish: fn(f32) -> f32 = match self {
            Pooling::Sumpos => positive,
            Pooling::Sumabs => f32::abs,
            Pooling::L2norm | Pooling::Posl2norm => f32::sqrt,
            _ => |v| v,
        };
        let pixels = values.len() / (samples * channels);
        values
            .chunks(channels * pixels)
            .flat_map(|sample| {
                (0..pixels).map(move |p| {
                    let mut acc = map(sample[p]);
                    for c in 1..channels {
                        let v = map(sample[c * pixels + p]);
                        acc = if max { acc.max(v) } else { acc + v };
                    }
                    finish(acc)
                })
            })
            .collect()
    }
}

impl TryFrom<String> for Pooling {
    type Error = Error;

    fn try_from(name: String) -> Result<Self> {
        Error::choose(&name.to_ascii_lowercase(), "a pooling", &Self::ALL, Self::name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_over_channels_as_pnpxai() {
        // One sample, two channels, two pixels: channel 0 = [1, -3], channel 1 = [-2, 4].
        let a = [1.0, -3.0, -2.0, 4.0];
        let pooled = |p: Pooling| p.apply(&a, 1, 2);
        assert_eq!(pooled(Pooling::Sumpos), vec![0.0, 1.0]);
        assert_eq!(pooled(Pooling::Sumabs), vec![1.0, 1.0]);
        assert_eq!(pooled(Pooling::L1norm), vec![3.0, 7.0]);
        assert_eq!(pooled(Pooling::Maxnorm), vec![2.0, 4.0]);
        assert_eq!(pooled(Pooling::L2normsq), vec![5.0, 25.0]);
        assert_eq!(pooled(Pooling::L2norm), vec![5f32.sqrt(), 5.0]);
        assert_eq!(pooled(Pooling::Possum), vec![1.0, 4.0]);
        assert_eq!(pooled(Pooling::Posmaxnorm), vec![1.0, 4.0]);
        assert_eq!(pooled(Pooling::Posl2normsq), vec![1.0, 16.0]);
        assert_eq!(pooled(Pooling::None), a.to_vec());
    }
}
