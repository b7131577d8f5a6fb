//! The layers a model graph is made of. Each file holds one layer kind with its forward and
//! its input-VJP side by side; the LRP rules (one level up) build on the same two.

mod activation;
mod add;
mod batch_norm;
mod channel_shuffle;
mod concat;
mod conv2d;
mod flatten;
mod layer_norm;
mod layer_scale;
mod linear;
mod matmul;
mod mean;
mod mul;
mod narrow;
mod permute;
mod pool;
mod reshape;
mod scale;
mod softmax;
mod tokens;
mod upsample;
pub(crate) use upsample::nearest_source;

pub use crate::backend::{PoolWindow, WindowGeometry};
pub use activation::Activation;
pub use add::Add;
pub use batch_norm::BatchNorm2d;
pub use channel_shuffle::ChannelShuffle;
pub use concat::Concat;
pub use conv2d::Conv2d;
pub use flatten::Flatten;
pub use layer_norm::{LayerNorm, NormAxis};
pub use layer_scale::LayerScale;
pub use linear::Linear;
pub use matmul::MatMul;
pub use mean::Mean;
pub use mul::Mul;
pub use narrow::Narrow;
pub use permute::{Permute, Transpose};
pub use pool::{AdaptiveAvgPool2d, AdaptiveMaxPool2d, AvgPool2d, MaxPool2d};
pub use reshape::Reshape;
pub use scale::Scale;
pub use softmax::Softmax;
pub use tokens::{PositionEmbedding, PrependTokens};
pub use upsample::{Upsample, UpsampleMode, UpsampleSize};

use crate::error::{Error, Result};
use crate::tensor::{Device, Tensor};

/// PyTorch's `dim` (negative counts from the end) as an index into `rank` dimensions.
pub(crate) fn resolve_axis(dim: isize, rank: usize) -> Result<usize> {
    let axis = if dim < 0 { rank as isize + dim } else { dim };
    usize::try_from(axis)
        .ok()
        .filter(|&a| a < rank)
        .ok_or_else(|| Error::Shape(format!("dimension {dim} of a tensor of rank {rank}")))
}

/// What every layer knows: its forward, and the gradient of a scalar with respect to its
/// inputs given the gradient with respect to its output. No weight gradients, ever.
pub trait Layer {
    fn forward(&self, inputs: &[&Tensor]) -> Result<Tensor>;

    /// `grad` has the output's shape; the result holds one tensor per input, in order.
    fn input_vjp(&self, inputs: &[&Tensor], output: &Tensor, grad: &Tensor) -> Result<Vec<Tensor>>;
}

/// One node's operation. An enum rather than trait objects so that LRP rules, canonizers and
/// importers can look inside a layer.
#[derive(Debug, Clone)]
pub enum Op {
    /// The graph's input image batch.
    Input,
    Conv2d(Conv2d),
    Linear(Linear),
    BatchNorm2d(BatchNorm2d),
    Activation(Activation),
    MaxPool2d(MaxPool2d),
    AvgPool2d(AvgPool2d),
    AdaptiveAvgPool2d(AdaptiveAvgPool2d),
    AdaptiveMaxPool2d(AdaptiveMaxPool2d),
    Flatten(Flatten),
    Reshape(Reshape),
    Mean(Mean),
    Softmax(Softmax),
    Upsample(Upsample),
    /// The product of two activations.
    MatMul(MatMul),
    Scale(Scale),
    PrependTokens(PrependTokens),
    PositionEmbedding(PositionEmbedding),
    /// Dropout and stochastic depth in eval mode, and BatchNorm after it has been folded away.
    Identity,
    Add(Add),
    /// The product of two branches (squeeze-and-excitation gates).
    Mul(Mul),
    LayerScale(LayerScale),
    LayerNorm(LayerNorm),
    Permute(Permute),
    Transpose(Transpose),
    Concat(Concat),
    Narrow(Narrow),
    ChannelShuffle(ChannelShuffle),
}

impl Op {
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Input => "Input",
            Op::Conv2d(_) => "Conv2d",
            Op::Linear(_) => "Linear",
            Op::BatchNorm2d(_) => "BatchNorm2d",
            Op::Activation(Activation::Relu) => "ReLU",
            Op::Activation(Activation::Relu6) => "ReLU6",
            Op::Activation(Activation::LeakyRelu { .. }) => "LeakyReLU",
            Op::Activation(Activation::Silu) => "SiLU",
            Op::Activation(Activation::Gelu | Activation::GeluTanh) => "GELU",
            Op::Activation(Activation::Sigmoid) => "Sigmoid",
            Op::Activation(Activation::Tanh) => "Tanh",
            Op::Activation(Activation::Hardswish) => "Hardswish",
            Op::Activation(Activation::Hardsigmoid) => "Hardsigmoid",
            Op::MaxPool2d(_) => "MaxPool2d",
            Op::AvgPool2d(_) => "AvgPool2d",
            Op::AdaptiveAvgPool2d(_) => "AdaptiveAvgPool2d",
            Op::AdaptiveMaxPool2d(_) => "AdaptiveMaxPool2d",
            Op::Flatten(_) => "Flatten",
            Op::Reshape(_) => "Reshape",
            Op::Mean(_) => "Mean",
            Op::Softmax(_) => "Softmax",
            Op::Upsample(_) => "Upsample",
            Op::MatMul(_) => "MatMul",
            Op::Scale(_) => "Scale",
            Op::PrependTokens(_) => "PrependTokens",
            Op::PositionEmbedding(_) => "PositionEmbedding",
            Op::Identity => "Identity",
            Op::Add(_) => "Add",
            Op::Mul(_) => "Mul",
            Op::LayerScale(_) => "LayerScale",
            Op::LayerNorm(_) => "LayerNorm",
            Op::Permute(_) => "Permute",
            Op::Transpose(_) => "Transpose",
            Op::Concat(_) => "Concat",
            Op::Narrow(_) => "Narrow",
            Op::ChannelShuffle(_) => "ChannelShuffle",
        }
    }

    /// The same operation with its parameters on `device`.
    pub fn to_device(&self, device: &Device) -> Result<Op> {
        Ok(match self {
            Op::Conv2d(c) => Op::Conv2d(c.with_parameters(
                c.weight().to_device(device)?,
                c.bias().map(|b| b.to_device(device)).transpose()?,
            )?),
            Op::Linear(l) => Op::Linear(l.with_parameters(
                l.weight().to_device(device)?,
                l.bias().map(|b| b.to_device(device)).transpose()?,
            )?),
            Op::BatchNorm2d(bn) => Op::BatchNorm2d(bn.to_device(device)?),
            Op::LayerScale(s) => Op::LayerScale(s.to_device(device)?),
            Op::LayerNorm(n) => Op::LayerNorm(n.to_device(device)?),
            Op::PrependTokens(t) => Op::PrependTokens(t.to_device(device)?),
            Op::PositionEmbedding(p) => Op::PositionEmbedding(p.to_device(device)?),
            other => other.clone(),
        })
    }

    /// Whether the op has parameters that [`Op::reset_parameters`] draws afresh.
    pub fn has_parameters(&self) -> bool {
        matches!(
            self,
            Op::Conv2d(_) | Op::Linear(_) | Op::BatchNorm2d(_) | Op::LayerNorm(_)
        )
    }

    /// The same op with its parameters drawn afresh as PyTorch's `reset_parameters` does
    /// (the model-randomisation sanity check): convolution and linear weights and biases
    /// uniform in ±1/sqrt(fan_in), from `rng` (weights first, row-major, then biases);
    /// BatchNorm and LayerNorm back to weight 1, bias 0 (and BatchNorm's statistics to mean 0,
    /// variance 1). None for an op without parameters.
    pub fn reset_parameters(&self, rng: &mut crate::rng::SplitMix64) -> Result<Option<Op>> {
        let mut uniform = |like: &Tensor, bound: f64| -> Result<Tensor> {
            let values: Vec<f32> = (0..like.elem_count())
                .map(|_| ((rng.uniform() * 2.0 - 1.0) * bound) as f32)
                .collect();
            like.device().tensor(&values, like.dims())
        };
        let bound = |weight: &Tensor| 1.0 / ((weight.elem_count() / weight.dims()[0].max(1)).max(1) as f64).sqrt();
        Ok(Some(match self {
            Op::Conv2d(c) => {
                let b = bound(c.weight());
                let weight = uniform(c.weight(), b)?;
                let bias = c.bias().map(|t| uniform(t, b)).transpose()?;
                Op::Conv2d(c.with_parameters(weight, bias)?)
            }
            Op::Linear(l) => {
                let b = bound(l.weight());
                let weight = uniform(l.weight(), b)?;
                let bias = l.bias().map(|t| uniform(t, b)).transpose()?;
                Op::Linear(l.with_parameters(weight, bias)?)
            }
            Op::BatchNorm2d(bn) => {
                let device = bn.affine_parameters().0.device();
                Op::BatchNorm2d(BatchNorm2d::identity(bn.channels(), bn.eps(), &device)?)
            }
            Op::LayerNorm(n) => Op::LayerNorm(n.reset()?),
            _ => return Ok(None),
        }))
    }

    /// The output's dims for inputs of `inputs` dims, without computing anything, and the
    /// elements of the largest buffer the CPU backend builds on the way (a convolution's
    /// unfolded patches); None where the shapes do not fit (the forward says why).
    pub fn plan(&self, inputs: &[&[usize]]) -> Option<(Vec<usize>, usize)> {
        let first = inputs.first()?;
        let same = || Some((first.to_vec(), 0));
        match self {
            Op::Input
            | Op::Identity
            | Op::BatchNorm2d(_)
            | Op::Activation(_)
            | Op::Add(_)
            | Op::LayerScale(_)
            | Op::LayerNorm(_)
            | Op::Softmax(_)
            | Op::Scale(_)
            | Op::PositionEmbedding(_) => same(),
            Op::PrependTokens(t) => {
                let mut dims = first.to_vec();
                *dims.get_mut(1)? += t.count();
                Some((dims, 0))
            }
            Op::MatMul(m) => {
                let (a, b) = (first, inputs.get(1)?);
                let (&[.., _, _], &[.., x, y]) = (*a, *b) else {
                    return None;
                };
                let mut dims = a.to_vec();
                *dims.last_mut()? = if m.rhs_transposed { x } else { y };
                Some((dims, 0))
            }
            Op::Reshape(r) => Some((r.output_dims(first)?, 0)),
            Op::Mean(m) => Some((m.output_dims(first)?, 0)),
            Op::Upsample(u) => {
                let &[n, c, h, w] = *first else { return None };
                let (ho, wo) = u.output_hw((h, w));
                Some((vec![n, c, ho, wo], 0))
            }
            // The larger of a gate and its map.
            Op::Mul(_) => inputs
                .iter()
                .max_by_key(|d| d.iter().product::<usize>())
                .map(|d| (d.to_vec(), 0)),
            Op::Permute(p) => Some((p.output_dims(first)?, 0)),
            Op::Transpose(t) => {
                let order = t.order(first.len()).ok()?;
                Some((order.iter().map(|&k| first[k]).collect(), 0))
            }
            Op::ChannelShuffle(_) => same(),
            Op::Concat(c) => {
                let mut dims = first.to_vec();
                *dims.get_mut(c.axis)? = inputs.iter().map(|d| d.get(c.axis).copied()).sum::<Option<usize>>()?;
                Some((dims, 0))
            }
            Op::Narrow(n) => {
                let mut dims = first.to_vec();
                let width = dims.get_mut(n.axis)?;
                if n.start + n.len > *width {
                    return None;
                }
                *width = n.len;
                Some((dims, 0))
            }
            Op::Conv2d(c) => {
                let &[n, _, h, w] = *first else { return None };
                let g = c.geometry();
                let (ho, wo) = g.output_hw((h, w))?;
                let patches = c.in_channels() / g.groups.max(1) * g.kernel.0 * g.kernel.1 * ho * wo * n;
                Some((vec![n, c.out_channels(), ho, wo], patches))
            }
            Op::Linear(l) => {
                let (last, rest) = first.split_last()?;
                (*last == l.in_features()).then(|| ([rest, &[l.out_features()]].concat(), 0))
            }
            Op::MaxPool2d(MaxPool2d { window }) | Op::AvgPool2d(AvgPool2d { window, .. }) => {
                let &[n, c, h, w] = *first else { return None };
                let (ho, wo) = window.output_hw((h, w))?;
                Some((vec![n, c, ho, wo], 0))
            }
            Op::AdaptiveAvgPool2d(AdaptiveAvgPool2d { output })
            | Op::AdaptiveMaxPool2d(AdaptiveMaxPool2d { output }) => {
                let &[n, c, _, _] = *first else { return None };
                Some((vec![n, c, output.0, output.1], 0))
            }
            Op::Flatten(_) => {
                let (n, rest) = first.split_first()?;
                Some((vec![*n, rest.iter().product()], 0))
            }
        }
    }

    fn layer(&self) -> Option<&dyn Layer> {
        Some(match self {
            Op::Input | Op::Identity => return None,
            Op::Conv2d(l) => l,
            Op::Linear(l) => l,
            Op::BatchNorm2d(l) => l,
            Op::Activation(l) => l,
            Op::MaxPool2d(l) => l,
            Op::AvgPool2d(l) => l,
            Op::AdaptiveAvgPool2d(l) => l,
            Op::AdaptiveMaxPool2d(l) => l,
            Op::Flatten(l) => l,
            Op::Reshape(l) => l,
            Op::Mean(l) => l,
            Op::Softmax(l) => l,
            Op::Upsample(l) => l,
            Op::MatMul(l) => l,
            Op::Scale(l) => l,
            Op::PrependTokens(l) => l,
            Op::PositionEmbedding(l) => l,
            Op::Add(l) => l,
            Op::Mul(l) => l,
            Op::LayerScale(l) => l,
            Op::LayerNorm(l) => l,
            Op::Permute(l) => l,
            Op::Transpose(l) => l,
            Op::Concat(l) => l,
            Op::Narrow(l) => l,
            Op::ChannelShuffle(l) => l,
        })
    }
}

impl Layer for Op {
    fn forward(&self, inputs: &[&Tensor]) -> Result<Tensor> {
        match self.layer() {
            Some(layer) => layer.forward(inputs),
            None => Ok(inputs[0].clone()),
        }
    }

    fn input_vjp(&self, inputs: &[&Tensor], output: &Tensor, grad: &Tensor) -> Result<Vec<Tensor>> {
        match self.layer() {
            Some(layer) => layer.input_vjp(inputs, output, grad),
            None => Ok(vec![grad.clone()]),
        }
    }
}
