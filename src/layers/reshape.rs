//! `x.reshape(N, *shape)`: the batch dimension stays, the others take `shape`, where one entry
//! may be -1 (inferred), as PyTorch's `reshape`/`view`/`flatten(2)` write it. Its input-VJP
//! reshapes back.

use super::Layer;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reshape {
    /// The dims after the batch; one may be -1.
    pub shape: Vec<isize>,
}

impl Reshape {
    /// The output's dims for an input of `dims`; None where the sizes do not fit.
    pub fn output_dims(&self, dims: &[usize]) -> Option<Vec<usize>> {
        let (&batch, rest) = dims.split_first()?;
        let total: usize = rest.iter().product();
        let known: usize = self.shape.iter().filter(|&&d| d >= 0).map(|&d| d as usize).product();
        let inferred = match self.shape.iter().filter(|&&d| d < 0).count() {
            0 => None,
            1 if known > 0 && total.is_multiple_of(known) => Some(total / known),
            _ => return None,
        };
        let out: Vec<usize> = std::iter::once(batch)
            .chain(
                self.shape
                    .iter()
                    .map(|&d| usize::try_from(d).ok().or(inferred).unwrap_or(0)),
            )
            .collect();
        (out[1..].iter().product::<usize>() == total).then_some(out)
    }
}

impl Layer for Reshape {
    fn forward(&self, inputs: &[&Tensor]) -> Result<Tensor> {
        let dims = inputs[0].dims();
        let out = self.output_dims(dims).ok_or_else(|| {
            Error::Shape(format!(
                "cannot reshape a tensor of shape {dims:?} to [batch, {}]",
                self.shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")
            ))
        })?;
        inputs[0].reshape(&out)
    }

    fn input_vjp(&self, inputs: &[&Tensor], _output: &Tensor, grad: &Tensor) -> Result<Vec<Tensor>> {
        Ok(vec![grad.reshape(inputs[0].dims())?])
    }
}
