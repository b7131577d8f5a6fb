//! Softmax along one dimension (attention weights, probability heads); its input-VJP reads
//! the output, s * (g - sum(g * s)).

use super::{resolve_axis, Layer};
use crate::error::Result;
use crate::tensor::Tensor;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Softmax {
    /// PyTorch's `dim`: negative counts from the end.
    pub dim: isize,
}

impl Layer for Softmax {
    fn forward(&self, inputs: &[&Tensor]) -> Result<Tensor> {
        inputs[0].softmax(resolve_axis(self.dim, inputs[0].rank())?)
    }

    fn input_vjp(&self, _inputs: &[&Tensor], output: &Tensor, grad: &Tensor) -> Result<Vec<Tensor>> {
        Ok(vec![output.softmax_vjp(grad, resolve_axis(self.dim, output.rank())?)?])
    }
}
