//! Flatten from dimension 1 (NCHW row-major), as torch.flatten(x, 1).

use super::Layer;
use crate::error::Result;
use crate::tensor::Tensor;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flatten;

impl Layer for Flatten {
    fn forward(&self, inputs: &[&Tensor]) -> Result<Tensor> {
        inputs[0].flatten_from_1()
    }

    fn input_vjp(&self, inputs: &[&Tensor], _output: &Tensor, grad: &Tensor) -> Result<Vec<Tensor>> {
        Ok(vec![grad.reshape(inputs[0].dims())?])
    }
}
