//! A reordering of dimensions (torchvision's `Permute`, ConvNeXt's NCHW <-> NHWC); its
//! input-VJP applies the inverse order.

use super::Layer;
use crate::error::Result;
use crate::tensor::Tensor;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permute {
    /// Output dimension k is input dimension `order[k]`.
    pub order: Vec<usize>,
}

impl Permute {
    /// The dims of the result for an input of `dims`; None when the order does not fit.
    pub fn output_dims(&self, dims: &[usize]) -> Option<Vec<usize>> {
        if self.order.len() != dims.len() {
            return None;
        }
        self.order.iter().map(|&k| dims.get(k).copied()).collect()
    }

    fn inverse(&self) -> Vec<usize> {
        let mut inverse = vec![0; self.order.len()];
        for (k, &from) in self.order.iter().enumerate() {
            if let Some(slot) = inverse.get_mut(from) {
                *slot = k;
            }
        }
        inverse
    }
}

impl Layer for Permute {
    fn forward(&self, inputs: &[&Tensor]) -> Result<Tensor> {
        inputs[0].permute(&self.order)
    }

    fn input_vjp(&self, _inputs: &[&Tensor], _output: &Tensor, grad: &Tensor) -> Result<Vec<Tensor>> {
        Ok(vec![grad.permute(&self.inverse())?])
    }
}
