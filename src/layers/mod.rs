//! The layers a model graph is made of. Each file holds one layer kind with its forward and
//! its input-VJP side by side; the LRP rules (one level up) build on the same two.

mod activation;
mod add;
mod batch_norm;
mod conv2d;
mod flatten;
mod linear;
mod pool;

pub use crate::backend::{PoolWindow, WindowGeometry};
pub use activation::Activation;
pub use add::Add;
pub use batch_norm::BatchNorm2d;
pub use conv2d::Conv2d;
pub use flatten::Flatten;
pub use linear::Linear;
pub use pool::{AdaptiveAvgPool2d, AvgPool2d, MaxPool2d};

use crate::error::Result;
use crate::tensor::{Device, Tensor};

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
    Flatten(Flatten),
    /// Dropout in eval mode, and BatchNorm after it has been folded away.
    Identity,
    Add(Add),
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
            Op::MaxPool2d(_) => "MaxPool2d",
            Op::AvgPool2d(_) => "AvgPool2d",
            Op::AdaptiveAvgPool2d(_) => "AdaptiveAvgPool2d",
            Op::Flatten(_) => "Flatten",
            Op::Identity => "Identity",
            Op::Add(_) => "Add",
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
            other => other.clone(),
        })
    }

    /// The output's dims for inputs of `inputs` dims, without computing anything, and the
    /// elements of the largest buffer the CPU backend builds on the way (a convolution's
    /// unfolded patches); None where the shapes do not fit (the forward says why).
    pub fn plan(&self, inputs: &[&[usize]]) -> Option<(Vec<usize>, usize)> {
        let first = inputs.first()?;
        let same = || Some((first.to_vec(), 0));
        match self {
            Op::Input | Op::Identity | Op::BatchNorm2d(_) | Op::Activation(_) | Op::Add(_) => same(),
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
            Op::AdaptiveAvgPool2d(p) => {
                let &[n, c, _, _] = *first else { return None };
                Some((vec![n, c, p.output.0, p.output.1], 0))
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
            Op::Flatten(l) => l,
            Op::Add(l) => l,
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
