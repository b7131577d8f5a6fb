//! Residual addition of two (or more) branches of the same shape.

use super::Layer;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Add;

impl Layer for Add {
    fn forward(&self, inputs: &[&Tensor]) -> Result<Tensor> {
        let (first, rest) = inputs
            .split_first()
            .ok_or_else(|| Error::InvalidGraph("an add node needs inputs".into()))?;
        let mut sum = (*first).clone();
        for x in rest {
            if x.dims() != sum.dims() {
                return Err(Error::InvalidGraph(format!(
                    "residual add of shapes {:?} and {:?}",
                    sum.dims(),
                    x.dims()
                )));
            }
            sum = sum.add(x)?;
        }
        Ok(sum)
    }

    fn input_vjp(&self, inputs: &[&Tensor], _output: &Tensor, grad: &Tensor) -> Result<Vec<Tensor>> {
        Ok(vec![grad.clone(); inputs.len()])
    }
}
