//! Multiplication by a constant (attention's 1/sqrt(head width), the average of two heads);
//! its input-VJP scales the gradient alike.

use super::Layer;
use crate::error::Result;
use crate::tensor::Tensor;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scale {
    pub factor: f32,
}

impl Layer for Scale {
    fn forward(&self, inputs: &[&Tensor]) -> Result<Tensor> {
        inputs[0].affine(self.factor as f64, 0.0)
    }

    fn input_vjp(&self, _inputs: &[&Tensor], _output: &Tensor, grad: &Tensor) -> Result<Vec<Tensor>> {
        Ok(vec![grad.affine(self.factor as f64, 0.0)?])
    }
}
