//! Element-wise activations (ReLU, ReLU6, LeakyReLU); their forward and derivative are the
//! backends' `Map::Activation` and `Zip::ActivationVjp`.

use super::Layer;
use crate::backend::{Map, Zip};
use crate::error::Result;
use crate::tensor::Tensor;

pub use crate::backend::Activation;

impl Layer for Activation {
    fn forward(&self, inputs: &[&Tensor]) -> Result<Tensor> {
        inputs[0].map(Map::Activation(*self))
    }

    fn input_vjp(&self, inputs: &[&Tensor], _output: &Tensor, grad: &Tensor) -> Result<Vec<Tensor>> {
        Ok(vec![inputs[0].zip(grad, Zip::ActivationVjp(*self))?])
    }
}
