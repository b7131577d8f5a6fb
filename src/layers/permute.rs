//! Reorderings of dimensions (torchvision's `Permute`, ConvNeXt's NCHW <-> NHWC, a
//! transformer's `transpose(1, 2)`); their input-VJPs apply the inverse order.

use super::{resolve_axis, Layer};
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

/// Two dimensions swapped (`x.transpose(dim0, dim1)`, negative counting from the end); its
/// own inverse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transpose {
    pub dims: (isize, isize),
}

impl Transpose {
    /// The permutation it applies to a tensor of `rank` dimensions.
    pub fn order(&self, rank: usize) -> Result<Vec<usize>> {
        let (a, b) = (resolve_axis(self.dims.0, rank)?, resolve_axis(self.dims.1, rank)?);
        let mut order: Vec<usize> = (0..rank).collect();
        order.swap(a, b);
        Ok(order)
    }
}

impl Layer for Transpose {
    fn forward(&self, inputs: &[&Tensor]) -> Result<Tensor> {
        inputs[0].permute(&self.order(inputs[0].rank())?)
    }

    fn input_vjp(&self, _inputs: &[&Tensor], _output: &Tensor, grad: &Tensor) -> Result<Vec<Tensor>> {
        Ok(vec![grad.permute(&self.order(grad.rank())?)?])
    }
}
