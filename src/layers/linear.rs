//! Linear: y = x W^T + b over the last dimension of an input of any rank >= 2 (ConvNeXt and
//! transformers apply it to every position); its input-VJP is g W.

use super::Layer;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        let &[out_features, _] = weight.dims() else {
            return Err(Error::InvalidGraph(format!(
                "linear weight has shape {:?}, expected 2 dimensions",
                weight.dims()
            )));
        };
        if let Some(bias) = &bias {
            if bias.dims() != [out_features] {
                return Err(Error::InvalidGraph(format!(
                    "linear bias has shape {:?}, expected [{out_features}]",
                    bias.dims()
                )));
            }
        }
        Ok(Self { weight, bias })
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    pub fn in_features(&self) -> usize {
        self.weight.dims()[1]
    }

    pub fn out_features(&self) -> usize {
        self.weight.dims()[0]
    }

    pub fn with_parameters(&self, weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        Self::new(weight, bias)
    }

    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let y = x.matmul_last_axis(&self.weight, true)?;
        match &self.bias {
            Some(b) => y.over_rows(|rows| rows.channel_affine(None, Some(b))),
            None => Ok(y),
        }
    }

    pub fn transpose_apply(&self, grad: &Tensor) -> Result<Tensor> {
        grad.matmul_last_axis(&self.weight, false)
    }
}

impl Layer for Linear {
    fn forward(&self, inputs: &[&Tensor]) -> Result<Tensor> {
        let x = inputs[0];
        match x.dims() {
            [_, .., f] if *f == self.in_features() => self.apply(x),
            dims => Err(Error::InputSizeMismatch {
                layer: String::new(),
                kind: "Linear".into(),
                expected: format!("{} features", self.in_features()),
                found: format!("shape {dims:?}"),
            }),
        }
    }

    fn input_vjp(&self, _inputs: &[&Tensor], _output: &Tensor, grad: &Tensor) -> Result<Vec<Tensor>> {
        Ok(vec![self.transpose_apply(grad)?])
    }
}
