//! Flatten from dimension 1 (NCHW row-major), as torch.flatten(x, 1).

use candle_core::Tensor;

use super::Layer;
use crate::error::Result;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flatten;

impl Layer for Flatten {
    fn forward(&self, inputs: &[&Tensor]) -> Result<Tensor> {
        Ok(inputs[0].flatten_from(1)?)
    }

    fn input_vjp(&self, inputs: &[&Tensor], _output: &Tensor, grad: &Tensor) -> Result<Vec<Tensor>> {
        Ok(vec![grad.reshape(inputs[0].dims())?])
    }
}
