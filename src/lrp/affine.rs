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
pub(super) struct SignSplit {
    products: Products,
    both: bool,
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
    /// For the layer's input `x` and output `z`; `modify_a` and `modify_b` make A and B (and a
    /// and b) from the layer's weight (and bias), as zennit's parameter modifiers do.
    pub(super) fn new(
        layer: &Affine,
        x: &Tensor,
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
        let stacked_weight = layer.weight().elem_count() * if both { 4 } else { 2 };
        let stacks = match layer {
            Affine::Conv(c) => c.geometry().groups == 1,
            Affine::Linear(_) => true,
        } && fits(stacked_weight)
            && fits(2 * x.elem_count())
            && fits(2 * z.elem_count());
        let products = if stacks {
            let (a, b) = (modify_a(layer.weight())?, modify_b(layer.weight())?);
            let top = Tensor::cat(&[a.clone(), b.clone()], 1)?;
            let weight = match both {
                true => Tensor::cat(&[top, Tensor::cat(&[b, a], 1)?], 0)?,
                false => top,
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
            axis,
            features,
        })
    }

    /// `(z1, z2)`: z2 only with `both`.
    pub(super) fn forward(&self, xp: &Tensor, xn: &Tensor) -> Result<(Tensor, Option<Tensor>)> {
        match &self.products {
            Products::Stacked(layer) => {
                let z = layer.apply(&Tensor::cat(&[xp.clone(), xn.clone()], self.axis)?)?;
                if !self.both {
                    return Ok((z, None));
                }
                let half = z.dim(self.axis)? / 2;
                Ok((z.narrow(self.axis, 0, half)?, Some(z.narrow(self.axis, half, half)?)))
            }
            Products::Separate(separate) => {
                let Separate { a, b_bare, second } = separate.as_ref();
                let z1 = a.apply(xp)?.add(&b_bare.apply(xn)?)?;
                let z2 = match second {
                    Some((b, a_bare)) => Some(b.apply(xp)?.add(&a_bare.apply(xn)?)?),
                    None => None,
                };
                Ok((z1, z2))
            }
        }
    }

    /// The signals at x+ and x- from `g1` (at z1) and `g2` (at z2, with `both`), for an input
    /// shaped like `x`.
    pub(super) fn backward(&self, g1: &Tensor, g2: Option<&Tensor>, x: &Tensor) -> Result<(Tensor, Tensor)> {
        match &self.products {
            Products::Stacked(layer) => {
                let g = match g2 {
                    Some(g2) => Tensor::cat(&[g1.clone(), g2.clone()], self.axis)?,
                    None => g1.clone(),
                };
                // x's spatial size is the stacked input's: all a convolution's VJP needs of it.
                let t = layer.transpose_apply(&g, x)?;
                Ok((
                    t.narrow(self.axis, 0, self.features)?,
                    t.narrow(self.axis, self.features, self.features)?,
                ))
            }
            Products::Separate(separate) => {
                let Separate { a, b_bare: b, .. } = separate.as_ref();
                let mut at_xp = a.transpose_apply(g1, x)?;
                let mut at_xn = b.transpose_apply(g1, x)?;
                if let Some(g2) = g2 {
                    at_xp = at_xp.add(&b.transpose_apply(g2, x)?)?;
                    at_xn = at_xn.add(&a.transpose_apply(g2, x)?)?;
                }
                Ok((at_xp, at_xn))
            }
        }
    }
}
