//! A learned per-channel scale (ConvNeXt's `layer_scale`, timm's `LayerScale`/`gamma`):
//! y[n, c, ...] = gamma[c] * x[n, c, ...]. Its input-VJP scales the gradient alike.

use super::Layer;
use crate::error::{Error, Result};
use crate::tensor::{Device, Tensor};

#[derive(Debug, Clone)]
pub struct LayerScale {
    gamma: Tensor,
}

impl LayerScale {
    /// `gamma` with one value per channel, in any shape of C elements ([C], [C, 1, 1]).
    pub fn new(gamma: Tensor) -> Result<Self> {
        let c = gamma.elem_count();
        Ok(Self {
            gamma: gamma.reshape(&[c])?,
        })
    }

    pub fn channels(&self) -> usize {
        self.gamma.dims()[0]
    }

    pub fn to_device(&self, device: &Device) -> Result<Self> {
        Ok(Self {
            gamma: self.gamma.to_device(device)?,
        })
    }

    fn scale(&self, x: &Tensor) -> Result<Tensor> {
        if x.rank() < 2 || x.dim(1)? != self.channels() {
            return Err(Error::InvalidGraph(format!(
                "layer scale of {} channels for an input of shape {:?}",
                self.channels(),
                x.dims()
            )));
        }
        x.channel_affine(Some(&self.gamma), None)
    }
}

impl Layer for LayerScale {
    fn forward(&self, inputs: &[&Tensor]) -> Result<Tensor> {
        self.scale(inputs[0])
    }

    fn input_vjp(&self, _inputs: &[&Tensor], _output: &Tensor, grad: &Tensor) -> Result<Vec<Tensor>> {
        Ok(vec![self.scale(grad)?])
    }
}
