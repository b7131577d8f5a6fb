//! LRP rules with zennit's exact semantics. Every rule on a linear-type layer is "forward with
//! modified inputs and parameters, divide the relevance by the stabilised output, take the
//! input-VJP with the same parameters, multiply by the modified inputs" — so each rule is a
//! few calls to `Affine::apply` / `Affine::transpose_apply`.

use serde::{Deserialize, Serialize};

use super::affine::{negative, positive, Affine, SignSplit};
use crate::backend::{Map, StdTerm};
use crate::error::Result;
use crate::layers::{Layer, Op};
use crate::tensor::Tensor;

/// zennit's default stabiliser for every rule but Epsilon.
pub const STABILIZER: f64 = 1e-6;

const fn stabilizer() -> f64 {
    STABILIZER
}

/// A lower or upper input bound for ZBox: one value, or one per input channel. JSON takes a
/// number, a list, or the text form `-2.1` / `-2.1,-2.0,-1.8`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged, try_from = "BoundSpec")]
pub enum Bound {
    Scalar(f64),
    PerChannel(Vec<f64>),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum BoundSpec {
    Scalar(f64),
    PerChannel(Vec<f64>),
    Text(String),
}

impl TryFrom<BoundSpec> for Bound {
    type Error = crate::Error;

    fn try_from(spec: BoundSpec) -> Result<Self> {
        match spec {
            BoundSpec::Scalar(v) => Ok(Bound::Scalar(v)),
            BoundSpec::PerChannel(values) => Ok(Bound::PerChannel(values)),
            BoundSpec::Text(text) => text.parse(),
        }
    }
}

/// One number, or comma-separated numbers (one per channel).
impl std::str::FromStr for Bound {
    type Err = crate::Error;

    fn from_str(text: &str) -> Result<Self> {
        let values = text
            .split(',')
            .map(|v| v.trim().parse::<f64>().ok().filter(|v| v.is_finite()))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| crate::Error::Unparsable {
                value: text.to_string(),
                what: "a bound",
                expected: "a number or comma-separated numbers (one per channel)".to_string(),
            })?;
        Ok(match values.as_slice() {
            [v] => Bound::Scalar(*v),
            _ => Bound::PerChannel(values),
        })
    }
}

impl Bound {
    /// The bound as a tensor shaped like `x` ([N, C, ...]).
    fn like(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Bound::Scalar(v) => x.fill_like(*v as f32),
            Bound::PerChannel(values) => {
                let c = values.len();
                if x.rank() < 2 || x.dims()[1] != c {
                    return Err(crate::Error::invalid_parameter(
                        "zbox bounds",
                        format!("{c} per-channel values for an input of shape {:?}", x.dims()),
                    ));
                }
                let values: Vec<f32> = values.iter().map(|&v| v as f32).collect();
                let values = x.device().tensor(&values, &[c])?;
                x.zeros_like()?.channel_affine(None, Some(&values))
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rule", rename_all = "kebab-case")]
pub enum Rule {
    /// R_in = x * W^T (R / stabilize(z, epsilon)).
    Epsilon { epsilon: f64 },
    /// zennit's generalised Gamma, chosen per output by the sign of the original output.
    Gamma {
        gamma: f64,
        #[serde(default = "stabilizer")]
        stabilizer: f64,
    },
    /// Alpha=1, beta=0 with zennit's handling of negative inputs.
    #[serde(rename = "zplus")]
    ZPlus {
        #[serde(default = "stabilizer")]
        stabilizer: f64,
    },
    AlphaBeta {
        alpha: f64,
        beta: f64,
        #[serde(default = "stabilizer")]
        stabilizer: f64,
    },
    /// For the input layer, with the input's lowest and highest values (normalised space).
    #[serde(rename = "zbox")]
    ZBox {
        low: Bound,
        high: Bound,
        #[serde(default = "stabilizer")]
        stabilizer: f64,
    },
    Flat {
        #[serde(default = "stabilizer")]
        stabilizer: f64,
    },
    #[serde(rename = "wsquare")]
    WSquare {
        #[serde(default = "stabilizer")]
        stabilizer: f64,
    },
    /// Relevance passes through unchanged (element-wise layers).
    Pass,
    /// AttnLRP's identity rule, as lxt 2.1 applies it in its Gradient x Input form:
    /// element-wise layers (activations, BatchNorm, layer scale) pass relevance unchanged,
    /// R_in = R * x / (x + stabilizer), so it stops only where the input is exactly 0;
    /// LayerNorm holds its standard deviation constant, so what remains is linear (centring,
    /// scaling) and relevance follows it as in the epsilon rule: R_in = x * J^T (R / stabilize(y)).
    Identity {
        #[serde(default = "stabilizer")]
        stabilizer: f64,
    },
    /// AttnLRP's uniform rule on a product of n factors (element-wise, or attention's matrix
    /// products): each factor gets 1/n of the relevance, in proportion to its contribution.
    Uniform {
        #[serde(default = "stabilizer")]
        stabilizer: f64,
    },
    /// CP-LRP on a product of activations (attention weights times values): the first
    /// factor is held constant, so it gets no relevance and the second gets all of it, in
    /// proportion to what it contributed: R_v = v * VJP_v(R / stabilize(y)).
    ConstantWeights {
        #[serde(default = "stabilizer")]
        stabilizer: f64,
    },
    /// Relevance split in proportion to each input's contribution (pooling, sums).
    Norm {
        #[serde(default = "stabilizer")]
        stabilizer: f64,
    },
}

fn stabilize(z: &Tensor, epsilon: f64) -> Result<Tensor> {
    z.map(Map::Stabilize {
        epsilon: epsilon as f32,
    })
}

fn misapplied(rule: &Rule, op: &Op, applies_to: &str) -> crate::Error {
    crate::Error::UnsupportedLayer {
        layer: String::new(),
        kind: op.kind().into(),
        reason: format!("the {rule:?} rule applies to {applies_to} only"),
    }
}

/// R_i = x_i * VJP_i(R / (share * stabilize(y))): each input's part of the output, in
/// proportion to what it contributed (sums, averages), and 1/share of it for products, whose
/// every factor accounts for the whole output.
fn proportional(
    op: &Op,
    inputs: &[&Tensor],
    output: &Tensor,
    relevance: &Tensor,
    stabilizer: f64,
    share: f64,
) -> Result<Vec<Tensor>> {
    let mut g = relevance.div(&stabilize(output, stabilizer)?)?;
    if share != 1.0 {
        g = g.affine(1.0 / share, 0.0)?;
    }
    let grads = op.input_vjp(inputs, output, &g)?;
    inputs.iter().zip(grads).map(|(x, g)| x.mul(&g)).collect()
}

impl Rule {
    /// Relevance at the inputs of the node running `op`, given its inputs, its output and the
    /// relevance at its output. `nonnegative_input`: the first input is known never to be
    /// negative (behind a ReLU), which spares the sign-split rules the products of its
    /// negative part.
    pub fn apply(
        &self,
        op: &Op,
        inputs: &[&Tensor],
        output: &Tensor,
        relevance: &Tensor,
        nonnegative_input: bool,
    ) -> Result<Vec<Tensor>> {
        match (self, op) {
            (Rule::Pass, _) => return Ok(vec![relevance.clone(); inputs.len()]),
            (Rule::Norm { stabilizer }, _) => return proportional(op, inputs, output, relevance, *stabilizer, 1.0),
            (
                Rule::Identity { stabilizer },
                Op::Activation(_) | Op::LayerScale(_) | Op::BatchNorm2d(_) | Op::Identity,
            ) => {
                let x = inputs[0];
                let kept = x.div(&x.affine(1.0, *stabilizer)?)?;
                return Ok(vec![relevance.mul(&kept)?]);
            }
            (Rule::Identity { stabilizer }, Op::LayerNorm(norm)) => {
                let x = inputs[0];
                let g = relevance.div(&stabilize(output, *stabilizer)?)?;
                return Ok(vec![x.mul(&norm.vjp(x, &g, StdTerm::Constant)?)?]);
            }
            (Rule::Uniform { stabilizer }, Op::Mul(_) | Op::MatMul(_)) => {
                return proportional(op, inputs, output, relevance, *stabilizer, inputs.len() as f64)
            }
            (Rule::ConstantWeights { stabilizer }, Op::MatMul(_)) => {
                let mut shares = proportional(op, inputs, output, relevance, *stabilizer, 1.0)?;
                shares[0] = shares[0].zeros_like()?;
                return Ok(shares);
            }
            (Rule::Identity { .. }, _) => {
                return Err(misapplied(self, op, "activations, normalisations and layer scales"))
            }
            (Rule::Uniform { .. }, _) => return Err(misapplied(self, op, "products")),
            (Rule::ConstantWeights { .. }, _) => return Err(misapplied(self, op, "products of activations")),
            _ => {}
        }
        let layer = Affine::of(op).ok_or_else(|| misapplied(self, op, "Conv2d and Linear layers"))?;
        let x = inputs[0];
        Ok(vec![self.affine_relevance(
            &layer,
            (x, nonnegative_input),
            output,
            relevance,
        )?])
    }

    /// `z` is the layer's own output at `x` (the forward pass already made it): the rules that
    /// divide by it or read its signs do not compute it again.
    fn affine_relevance(
        &self,
        layer: &Affine,
        (x, nonnegative_input): (&Tensor, bool),
        z: &Tensor,
        r: &Tensor,
    ) -> Result<Tensor> {
        let ratio = |z: Tensor, s: f64| -> Result<Tensor> { r.div(&stabilize(&z, s)?) };
        Ok(match self {
            Rule::Epsilon { epsilon } => {
                let g = r.div(&stabilize(z, *epsilon)?)?;
                x.mul(&layer.transpose_apply(&g, x)?)?
            }
            Rule::ZPlus { stabilizer } => {
                let split = SignSplit::new(layer, (x, nonnegative_input), z, positive, negative, false)?;
                let (z, _) = split.forward()?;
                split.relevance(&ratio(z, *stabilizer)?, None)?
            }
            Rule::AlphaBeta {
                alpha,
                beta,
                stabilizer,
            } => {
                // alpha * (relevance through the positive contributions) - beta * (through the
                // negative ones), both halves through one stacked product.
                let split = SignSplit::new(layer, (x, nonnegative_input), z, positive, negative, true)?;
                let (z_pos, z_neg) = split.forward()?;
                let g_pos = ratio(z_pos, *stabilizer)?.affine(*alpha, 0.0)?;
                let g_neg = ratio(z_neg.expect("both halves"), *stabilizer)?.affine(-*beta, 0.0)?;
                split.relevance(&g_pos, Some(&g_neg))?
            }
            Rule::Gamma { gamma, stabilizer } => {
                let g = *gamma;
                let up = |t: &Tensor| -> Result<Tensor> { t.add(&positive(t)?.affine(g, 0.0)?) };
                let down = |t: &Tensor| -> Result<Tensor> { t.add(&negative(t)?.affine(g, 0.0)?) };
                let split = SignSplit::new(layer, (x, nonnegative_input), z, up, down, true)?;
                let (z_pos, z_neg) = split.forward()?;
                let g_pos = ratio(z_pos, *stabilizer)?.mul(&z.map(Map::PositiveMask)?)?;
                let g_neg = ratio(z_neg.expect("both halves"), *stabilizer)?.mul(&z.map(Map::NegativeMask)?)?;
                split.relevance(&g_pos, Some(&g_neg))?
            }
            Rule::ZBox { low, high, stabilizer } => {
                let (low, high) = (low.like(x)?, high.like(x)?);
                let plus = layer.modified(positive, true)?;
                let minus = layer.modified(negative, true)?;
                let shifted = z.sub(&plus.apply(&low)?)?.sub(&minus.apply(&high)?)?;
                let g = ratio(shifted, *stabilizer)?;
                let r_x = x.mul(&layer.transpose_apply(&g, x)?)?;
                r_x.sub(&low.mul(&plus.transpose_apply(&g, x)?)?)?
                    .sub(&high.mul(&minus.transpose_apply(&g, x)?)?)?
            }
            Rule::Flat { stabilizer } => {
                let flat = layer.modified(|t| t.ones_like(), false)?;
                let g = ratio(flat.apply(&x.ones_like()?)?, *stabilizer)?;
                flat.transpose_apply(&g, x)?
            }
            Rule::WSquare { stabilizer } => {
                let squared = layer.modified(|t| t.map(Map::Sqr), true)?;
                let g = ratio(squared.apply(&x.ones_like()?)?, *stabilizer)?;
                squared.transpose_apply(&g, x)?
            }
            Rule::Pass
            | Rule::Norm { .. }
            | Rule::Identity { .. }
            | Rule::Uniform { .. }
            | Rule::ConstantWeights { .. } => {
                unreachable!("handled before")
            }
        })
    }
}
