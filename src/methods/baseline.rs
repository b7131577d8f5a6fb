//! Integrated Gradients baselines: the "absence of signal" the path starts from.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::rng::SplitMix64;

/// Written as `{"kind": "blur", "sigma": 2}` in JSON, or in the short form [`Baseline::SYNTAX`]
/// (`"blur:2"`, also accepted in JSON).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", try_from = "BaselineSpec")]
pub enum Baseline {
    #[default]
    Zero,
    Constant {
        value: f32,
    },
    /// Gaussian blur of the input (Sturmfels et al.), zero-padded, kernel radius 3 sigma.
    Blur {
        sigma: f32,
    },
    /// Uniform noise in [low, high).
    UniformNoise {
        low: f32,
        high: f32,
        seed: u64,
    },
    /// An explicit baseline, broadcastable to the input.
    #[serde(skip)]
    Tensor(Tensor),
}

/// What a baseline may be written as: the short form, a constant, or the tagged object.
#[derive(Deserialize)]
#[serde(untagged)]
enum BaselineSpec {
    Text(String),
    Constant(f32),
    Tagged(TaggedBaseline),
}

/// [`Baseline`]'s JSON object form (all but an explicit tensor).
#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
enum TaggedBaseline {
    Zero,
    Constant {
        value: f32,
    },
    Blur {
        sigma: f32,
    },
    UniformNoise {
        low: f32,
        high: f32,
        #[serde(default)]
        seed: u64,
    },
}

impl TryFrom<BaselineSpec> for Baseline {
    type Error = Error;

    fn try_from(spec: BaselineSpec) -> Result<Self> {
        Ok(match spec {
            BaselineSpec::Text(text) => text.parse()?,
            BaselineSpec::Constant(value) => Baseline::Constant { value },
            BaselineSpec::Tagged(TaggedBaseline::Zero) => Baseline::Zero,
            BaselineSpec::Tagged(TaggedBaseline::Constant { value }) => Baseline::Constant { value },
            BaselineSpec::Tagged(TaggedBaseline::Blur { sigma }) => Baseline::Blur { sigma },
            BaselineSpec::Tagged(TaggedBaseline::UniformNoise { low, high, seed }) => {
                Baseline::UniformNoise { low, high, seed }
            }
        })
    }
}

/// The short form: `zero`, a number, `blur:<sigma>` or `uniform:<low>:<high>` (seed 0).
impl std::str::FromStr for Baseline {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        let bad = || Error::Unparsable {
            value: text.to_string(),
            what: "a baseline",
            expected: Baseline::SYNTAX.to_string(),
        };
        let number = |s: &str| s.trim().parse::<f32>().ok().filter(|v| v.is_finite()).ok_or_else(bad);
        let parts: Vec<&str> = text.trim().split(':').collect();
        Ok(match parts.as_slice() {
            ["zero"] => Baseline::Zero,
            ["blur", sigma] => Baseline::Blur { sigma: number(sigma)? },
            ["uniform", low, high] => Baseline::UniformNoise {
                low: number(low)?,
                high: number(high)?,
                seed: 0,
            },
            [value] => Baseline::Constant { value: number(value)? },
            _ => return Err(bad()),
        })
    }
}

impl Baseline {
    /// The short form's syntax.
    pub const SYNTAX: &'static str = "zero, a number, blur:<sigma> or uniform:<low>:<high>";

    /// The baseline for `input` [N, C, H, W], same shape and device.
    pub fn for_input(&self, input: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Baseline::Zero => input.zeros_like()?,
            Baseline::Constant { value } => (input.zeros_like()? + *value as f64)?,
            Baseline::Blur { sigma } => blur(input, *sigma)?,
            Baseline::UniformNoise { low, high, seed } => {
                if low.partial_cmp(high) == Some(std::cmp::Ordering::Greater) || low.is_nan() || high.is_nan() {
                    return Err(Error::invalid_parameter(
                        "baseline",
                        format!("uniform noise needs low <= high, got {low} and {high}"),
                    ));
                }
                let mut rng = SplitMix64::new(*seed);
                let values: Vec<f32> = (0..input.elem_count())
                    .map(|_| low + (high - low) * rng.uniform() as f32)
                    .collect();
                Tensor::from_vec(values, input.dims(), input.device())?
            }
            Baseline::Tensor(t) => t
                .to_device(input.device())?
                .broadcast_as(input.dims())
                .map_err(|_| {
                    Error::invalid_parameter(
                        "baseline",
                        format!(
                            "shape {:?} does not broadcast to the input's {:?}",
                            t.dims(),
                            input.dims()
                        ),
                    )
                })?
                .contiguous()?,
        })
    }
}

fn blur(input: &Tensor, sigma: f32) -> Result<Tensor> {
    if !(sigma > 0.0 && sigma.is_finite()) {
        return Err(Error::invalid_parameter("baseline", "blur sigma must be > 0"));
    }
    let radius = (3.0 * sigma).ceil() as usize;
    let taps: Vec<f32> = (0..=2 * radius)
        .map(|i| (-((i as f32 - radius as f32).powi(2)) / (2.0 * sigma * sigma)).exp())
        .collect();
    let total: f32 = taps.iter().sum();
    let taps: Vec<f32> = taps.iter().map(|t| t / total).collect();
    let (_, c, _, _) = input.dims4()?;
    let k = taps.len();
    let device = input.device();
    // Separable: a depthwise [k x 1] pass then a [1 x k] pass.
    let vertical = Tensor::from_vec(taps.repeat(c), (c, 1, k, 1), device)?;
    let horizontal = Tensor::from_vec(taps.repeat(c), (c, 1, 1, k), device)?;
    let x = input.pad_with_zeros(2, radius, radius)?.conv2d(&vertical, 0, 1, 1, c)?;
    Ok(x.pad_with_zeros(3, radius, radius)?.conv2d(&horizontal, 0, 1, 1, c)?)
}
