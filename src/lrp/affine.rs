//! The linear-type layers LRP's rules modify (convolutions and linear layers), and the pair of
//! sign-split products the ZPlus, AlphaBeta and Gamma rules are made of, as one stacked
//! product where the layer allows it.

use crate::backend::Map;
use crate::error::Result;
use crate::layers::{Conv2d, Linear, Op};
use crate::tensor::Tensor;

/// A linear-type layer whose parameters a rule may replace.
pub(super) enum Affine {
    Conv(Conv2d),
    Linear(Linear),
}

impl Affine {
    pub(super) fn of(op: &Op) -> Option<Self> {
        match op {
            Op::Conv2d(c) => Some(Affine::Conv(c.clone())),
            Op::Linear(l) => Some(Affine::Linear(l.clone())),
            _ => None,
        }
    }

    pub(super) fn weight(&self) -> &Tensor {
        match self {
            Affine::Conv(c) => c.weight(),
            Affine::Linear(l) => l.weight(),
        }
    }

    pub(super) fn bias(&self) -> Option<&Tensor> {
        match self {
            Affine::Conv(c) => c.bias(),
            Affine::Linear(l) => l.bias(),
        }
    }

    /// The same layer with `modify` applied to its weight and to its bias (zennit modifies
    /// both), or with no bias when `with_bias` is false.
    pub(super) fn modified(&self, modify: impl Fn(&Tensor) -> Result<Tensor>, with_bias: bool) -> Result<Self> {
        let weight = modify(self.weight())?;
        let bias = match (with_bias, self.bias()) {
            (true, Some(b)) => Some(modify(b)?),
            _ => None,
        };
        self.with_parameters(weight, bias)
    }

    /// The same layer (geometry) with other parameters.
    fn with_parameters(&self, weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        Ok(match self {
            Affine::Conv(c) => Affine::Conv(c.with_parameters(weight, bias)?),
            Affine::Linear(l) => Affine::Linear(l.with_parameters(weight, bias)?),
        })
    }

    pub(super) fn apply(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Affine::Conv(c) => c.apply(x),
            Affine::Linear(l) => l.apply(x),
        }
    }

    /// Input-VJP, for an input shaped like `like`.
    pub(super) fn transpose_apply(&self, grad: &Tensor, like: &Tensor) -> Result<Tensor> {
        match self {
            Affine::Conv(c) => c.transpose_apply(grad, (like.dim(2)?, like.dim(3)?)),
            Affine::Linear(l) => l.transpose_apply(grad),
        }
    }
}

pub(super) fn positive(t: &Tensor) -> Result<Tensor> {
    t.map(Map::Clamp {
        low: 0.0,
        high: f32::INFINITY,
    })
}

pub(super) fn negative(t: &Tensor) -> Result<Tensor> {
    t.map(Map::Clamp {
        low: f32::NEG_INFINITY,
        high: 0.0,
    })
}

/// The two products of a sign-split rule, for parameters A and B (two modifications of the
/// layer's weight) and biases a and b:
///
/// - forward: `z1 = A x+ + B x- + a` and (with `both`) `z2 = B x+ + A x- + b`;
/// - back, from signals `g1` at z1 and `g2` at z2: `A^T g1 + B^T g2` at x+ and
///   `B^T g1 + A^T g2` at x-.
///
/// Where the layer allows it (a linear layer, an ungrouped convolution) this is one product of
/// twice the width: the input `[x+, x-]` stacked on the feature axis through the weight
/// `[[A, B], [B, A]]` (its first row only without `both`), so the convolution's im2col is made
/// once and each GEMM runs twice as full. A grouped convolution keeps the separate products
/// (stacking would mix its groups), as does a layer whose stacked tensors the device cannot hold.
///
/// Where x is known never to be negative (behind a ReLU: [`super::signs`]), x- is zero and its
/// half of every product is left out: `[A; B] x+` forward, `[A; B]^T [g1; g2]` back, half the
/// work. The terms left out are exact zeros, so the sums keep their values.
pub(super) struct SignSplit {
    products: Products,
    both: bool,
    /// x+, and x- unless x is never negative (then x+ is x and the products take it alone).
    xp: Tensor,
    xn: Option<Tensor>,
    /// Where x's features sit: channels for a convolution, the last axis for a linear layer.
    axis: usize,
    /// The input's feature count, where the stacked VJP's halves split.
    features: usize,
}

enum Products {
    Stacked(Affine),
    Separate(Box<Separate>),
}

/// A with bias a and B without; for the second half also B with bias b and A without. The
/// transposes ignore the biases, so `a` and `b_bare` serve both halves on the way back.
struct Separate {
    a: Affine,
    b_bare: Affine,
    second: Option<(Affine, Affine)>,
}

impl SignSplit {
    /// For the layer's input `x` (`nonnegative_input` where it is known never to be negative)
    /// and output `z`; `modify_a` and `modify_b` make A and B (and a and b) from the layer's
    /// weight (and bias), as zennit's parameter modifiers do.
    pub(super) fn new(
        layer: &Affine,
        (x, nonnegative_input): (&Tensor, bool),
        z: &Tensor,
        modify_a: impl Fn(&Tensor) -> Result<Tensor>,
        modify_b: impl Fn(&Tensor) -> Result<Tensor>,
        both: bool,
    ) -> Result<Self> {
        let axis = match layer {
            Affine::Conv(_) => 1,
            Affine::Linear(_) => x.rank() - 1,
        };
        let features = x.dim(axis)?;
        // A device that bounds its tensors (a GPU's largest storage buffer) may not hold the
        // stacked weight, input or output; the separate products it splits itself.
        let fits = |elems: usize| x.device().max_tensor_len().is_none_or(|max| elems <= max);
        let (xp, xn) = match nonnegative_input {
            true => (x.clone(), None),
            false => (positive(x)?, Some(negative(x)?)),
        };
        let input_halves = if nonnegative_input { 1 } else { 2 };
        let output_halves = if both { 2 } else { 1 };
        let stacks = match layer {
            Affine::Conv(c) => c.geometry().groups == 1,
            Affine::Linear(_) => true,
        } && fits(layer.weight().elem_count() * input_halves * output_halves)
            && fits(input_halves * x.elem_count())
            && fits(output_halves * z.elem_count());
        let products = if stacks {
            let (a, b) = (modify_a(layer.weight())?, modify_b(layer.weight())?);
            let weight = match (nonnegative_input, both) {
                (true, true) => Tensor::cat(&[a, b], 0)?,
                (true, false) => a,
                (false, true) => Tensor::cat(&[Tensor::cat(&[a.clone(), b.clone()], 1)?, Tensor::cat(&[b, a], 1)?], 0)?,
                (false, false) => Tensor::cat(&[a, b], 1)?,
            };
            let bias = match (layer.bias(), both) {
                (Some(bias), true) => Some(Tensor::cat(&[modify_a(bias)?, modify_b(bias)?], 0)?),
                (Some(bias), false) => Some(modify_a(bias)?),
                (None, _) => None,
            };
            Products::Stacked(layer.with_parameters(weight, bias)?)
        } else {
            let second = match both {
                true => Some((layer.modified(&modify_b, true)?, layer.modified(&modify_a, false)?)),
                false => None,
            };
            Products::Separate(Box::new(Separate {
                a: layer.modified(&modify_a, true)?,
                b_bare: layer.modified(&modify_b, false)?,
                second,
            }))
        };
        Ok(Self {
            products,
            both,
            xp,
            xn,
            axis,
            features,
        })
    }

    /// `(z1, z2)`: z2 only with `both`.
    pub(super) fn forward(&self) -> Result<(Tensor, Option<Tensor>)> {
        match &self.products {
            Products::Stacked(layer) => {
                let z = match &self.xn {
                    None => layer.apply(&self.xp)?,
                    Some(xn) => layer.apply(&Tensor::cat(&[self.xp.clone(), xn.clone()], self.axis)?)?,
                };
                if !self.both {
                    return Ok((z, None));
                }
                let half = z.dim(self.axis)? / 2;
                Ok((z.narrow(self.axis, 0, half)?, Some(z.narrow(self.axis, half, half)?)))
            }
            Products::Separate(separate) => {
                let Separate { a, b_bare, second } = separate.as_ref();
                // x+ through the first parameters, plus x- (where it is not zero) through the other.
                let product = |first: &Affine, other: &Affine| -> Result<Tensor> {
                    match &self.xn {
                        None => first.apply(&self.xp),
                        Some(xn) => first.apply(&self.xp)?.add(&other.apply(xn)?),
                    }
                };
                let z2 = match second {
                    Some((b, a_bare)) => Some(product(b, a_bare)?),
                    None => None,
                };
                Ok((product(a, b_bare)?, z2))
            }
        }
    }

    /// The relevance at x from signals `g1` (at z1) and `g2` (at z2, with `both`):
    /// `x+ (A^T g1 + B^T g2) + x- (B^T g1 + A^T g2)`.
    pub(super) fn relevance(&self, g1: &Tensor, g2: Option<&Tensor>) -> Result<Tensor> {
        let (at_xp, at_xn) = self.backward(g1, g2)?;
        let at_xp = self.xp.mul(&at_xp)?;
        match (&self.xn, at_xn) {
            (Some(xn), Some(at_xn)) => at_xp.add(&xn.mul(&at_xn)?),
            _ => Ok(at_xp),
        }
    }

    /// The signals at x+ and x- (none at x- where x is never negative).
    fn backward(&self, g1: &Tensor, g2: Option<&Tensor>) -> Result<(Tensor, Option<Tensor>)> {
        let x = &self.xp;
        match &self.products {
            Products::Stacked(layer) => {
                let g = match g2 {
                    Some(g2) => Tensor::cat(&[g1.clone(), g2.clone()], self.axis)?,
                    None => g1.clone(),
                };
                // x's spatial size is the stacked input's: all a convolution's VJP needs of it.
                let t = layer.transpose_apply(&g, x)?;
                if self.xn.is_none() {
                    return Ok((t, None));
                }
                Ok((
                    t.narrow(self.axis, 0, self.features)?,
                    Some(t.narrow(self.axis, self.features, self.features)?),
                ))
            }
            Products::Separate(separate) => {
                let Separate { a, b_bare: b, .. } = separate.as_ref();
                let mut at_xp = a.transpose_apply(g1, x)?;
                if let Some(g2) = g2 {
                    at_xp = at_xp.add(&b.transpose_apply(g2, x)?)?;
                }
                if self.xn.is_none() {
                    return Ok((at_xp, None));
                }
                let mut at_xn = b.transpose_apply(g1, x)?;
                if let Some(g2) = g2 {
                    at_xn = at_xn.add(&a.transpose_apply(g2, x)?)?;
                }
                Ok((at_xp, Some(at_xn)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::WindowGeometry;
    use crate::lrp::Rule;
    use crate::rng::SplitMix64;
    use crate::tensor::Device;

    fn random(rng: &mut SplitMix64, dims: &[usize], low: f64) -> Tensor {
        let n = dims.iter().product();
        let data: Vec<f32> = (0..n).map(|_| (low + (1.0 - low) * rng.uniform()) as f32).collect();
        Device::cpu().tensor(&data, dims).unwrap()
    }

    /// The shortcut for an input behind a ReLU (x- left out) against the full sign split, on
    /// the stacked product (an ungrouped convolution, a linear layer) and the separate ones (a
    /// grouped convolution), for every sign-split rule.
    #[test]
    fn leaving_out_a_zero_negative_part_keeps_the_relevance() {
        let mut rng = SplitMix64::new(7);
        let conv = |groups: usize, rng: &mut SplitMix64| {
            let geometry = WindowGeometry {
                kernel: (3, 3),
                stride: 1,
                dilation: 1,
                padding: (1, 1, 1, 1),
                groups,
            };
            let weight = random(rng, &[6, 6 / groups, 3, 3], -1.0);
            Op::Conv2d(Conv2d::new(weight, Some(random(rng, &[6], -1.0)), geometry).unwrap())
        };
        let linear =
            Op::Linear(Linear::new(random(&mut rng, &[5, 7], -1.0), Some(random(&mut rng, &[5], -1.0))).unwrap());
        let layers = [
            (conv(1, &mut rng), vec![2, 6, 5, 5]),
            (conv(3, &mut rng), vec![2, 6, 5, 5]),
            (linear, vec![2, 7]),
        ];
        let rules = [
            Rule::ZPlus { stabilizer: 1e-6 },
            Rule::AlphaBeta {
                alpha: 2.0,
                beta: 1.0,
                stabilizer: 1e-6,
            },
            Rule::Gamma {
                gamma: 0.25,
                stabilizer: 1e-6,
            },
        ];
        for (op, dims) in &layers {
            // ReLU-like: about a third exact zeros.
            let x = random(&mut rng, dims, -0.5)
                .map(Map::Clamp {
                    low: 0.0,
                    high: f32::INFINITY,
                })
                .unwrap();
            let z = match op {
                Op::Conv2d(c) => c.apply(&x).unwrap(),
                Op::Linear(l) => l.apply(&x).unwrap(),
                _ => unreachable!(),
            };
            let r = random(&mut rng, z.dims(), -1.0);
            for rule in &rules {
                let full = rule
                    .apply(op, &[&x], &z, &r, false)
                    .unwrap()
                    .remove(0)
                    .to_vec()
                    .unwrap();
                let short = rule.apply(op, &[&x], &z, &r, true).unwrap().remove(0).to_vec().unwrap();
                let scale = full.iter().fold(0f32, |m, v| m.max(v.abs()));
                let gap = full.iter().zip(&short).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
                assert!(gap <= 1e-6 * scale, "{rule:?} on {}: {gap} of {scale}", op.kind());
            }
        }
    }
}
