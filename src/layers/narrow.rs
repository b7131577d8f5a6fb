//! One slice along an axis (`torch.chunk` / `split` / `narrow`: ShuffleNet's halves); its
//! input-VJP puts the gradient back in place, with zeros around it.

use super::Layer;
use crate::error::Result;
use crate::tensor::Tensor;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Narrow {
    pub axis: usize,
    pub start: usize,
    pub len: usize,
}

impl Layer for Narrow {
    fn forward(&self, inputs: &[&Tensor]) -> Result<Tensor> {
        inputs[0].narrow(self.axis, self.start, self.len)
    }

    fn input_vjp(&self, inputs: &[&Tensor], _output: &Tensor, grad: &Tensor) -> Result<Vec<Tensor>> {
        let x = inputs[0];
        let end = self.start + self.len;
        let mut parts = Vec::with_capacity(3);
        if self.start > 0 {
            parts.push(x.narrow(self.axis, 0, self.start)?.zeros_like()?);
        }
        parts.push(grad.clone());
        let full = x.dim(self.axis)?;
        if end < full {
            parts.push(x.narrow(self.axis, end, full - end)?.zeros_like()?);
        }
        Ok(vec![Tensor::cat(&parts, self.axis)?])
    }
}
