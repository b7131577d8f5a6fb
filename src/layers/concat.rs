//! Concatenation of branches along the channels (DenseNet's dense connections, SqueezeNet's
//! Fire expansions, ShuffleNet's two halves); its input-VJP hands each input its slice.

use super::Layer;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Concat {
    pub axis: usize,
}

impl Layer for Concat {
    fn forward(&self, inputs: &[&Tensor]) -> Result<Tensor> {
        if inputs.is_empty() {
            return Err(Error::InvalidGraph("a concatenation needs inputs".into()));
        }
        let parts: Vec<Tensor> = inputs.iter().map(|t| (*t).clone()).collect();
        Tensor::cat(&parts, self.axis)
    }

    fn input_vjp(&self, inputs: &[&Tensor], _output: &Tensor, grad: &Tensor) -> Result<Vec<Tensor>> {
        let mut start = 0;
        inputs
            .iter()
            .map(|x| {
                let len = x.dim(self.axis)?;
                let slice = grad.narrow(self.axis, start, len);
                start += len;
                slice
            })
            .collect()
    }
}
