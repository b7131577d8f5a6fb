//! BatchNorm2d in eval mode: a per-channel affine map with the running statistics.

use super::{Activation, Layer};
use crate::error::{Error, Result};
use crate::tensor::{Device, Tensor};

#[derive(Debug, Clone)]
pub struct BatchNorm2d {
    eps: f64,
    /// weight / sqrt(var + eps), [C].
    scale: Tensor,
    /// bias - mean * scale, [C].
    shift: Tensor,
    /// A ReLU or ReLU6 fused after the affine map ([`BatchNorm2d::then`]).
    activation: Option<Activation>,
}

impl BatchNorm2d {
    /// From PyTorch's parameters and running statistics (host or device candle tensors).
    pub fn new(
        weight: &candle_core::Tensor,
        bias: &candle_core::Tensor,
        running_mean: &candle_core::Tensor,
        running_var: &candle_core::Tensor,
        eps: f64,
    ) -> Result<Self> {
        let c = running_mean.dims1()?;
        for (name, t) in [("weight", weight), ("bias", bias), ("running_var", running_var)] {
            if t.dims() != [c] {
                return Err(Error::InvalidGraph(format!(
                    "batch norm {name} has shape {:?}, expected [{c}]",
                    t.dims()
                )));
            }
        }
        let scale = (weight / running_var.affine(1.0, eps)?.sqrt()?)?;
        let shift = (bias - (running_mean * &scale)?)?;
        Ok(Self {
            scale: Tensor::from_candle(scale)?,
            shift: Tensor::from_candle(shift)?,
            eps,
            activation: None,
        })
    }

    pub fn channels(&self) -> usize {
        self.scale.dims()[0]
    }

    pub fn eps(&self) -> f64 {
        self.eps
    }

    /// Per-channel (scale, shift) of the affine map this layer applies, each [C].
    pub fn affine_parameters(&self) -> (&Tensor, &Tensor) {
        (&self.scale, &self.shift)
    }

    /// What zennit 0.5 leaves of a merged BatchNorm: weight 1, bias 0, mean 0, var 1, but the
    /// original eps — so it still divides by sqrt(1 + eps).
    pub fn identity(channels: usize, eps: f64, device: &Device) -> Result<Self> {
        let scale = 1.0f32 / (1.0f32 + eps as f32).sqrt();
        Ok(Self {
            scale: device.tensor(&vec![scale; channels], &[channels])?,
            shift: device.tensor(&vec![0.0; channels], &[channels])?,
            eps,
            activation: None,
        })
    }

    /// The same layer with its parameters on `device`.
    pub fn to_device(&self, device: &Device) -> Result<Self> {
        Ok(Self {
            scale: self.scale.to_device(device)?,
            shift: self.shift.to_device(device)?,
            eps: self.eps,
            activation: self.activation,
        })
    }

    /// This BatchNorm followed by `activation` as one layer (one pass over memory each way
    /// instead of two), for a ReLU or ReLU6: their derivative comes from the fused output
    /// (0 < y < 6 exactly where 0 < x < 6), which the VJP reads in place of the activation's
    /// input. None for other activations, or when one is already fused.
    pub fn then(&self, activation: Activation) -> Option<Self> {
        let fusable = matches!(activation, Activation::Relu | Activation::Relu6) && self.activation.is_none();
        fusable.then(|| Self {
            activation: Some(activation),
            ..self.clone()
        })
    }

    /// The activation fused after the affine map, if any.
    pub fn activation(&self) -> Option<Activation> {
        self.activation
    }
}

impl Layer for BatchNorm2d {
    fn forward(&self, inputs: &[&Tensor]) -> Result<Tensor> {
        let x = inputs[0];
        if x.rank() != 4 || x.dim(1)? != self.channels() {
            return Err(Error::InvalidGraph(format!(
                "batch norm expects [N, {}, H, W] inputs, got {:?}",
                self.channels(),
                x.dims()
            )));
        }
        match self.activation {
            Some(activation) => x.channel_affine_activation(&self.scale, &self.shift, activation),
            None => x.channel_affine(Some(&self.scale), Some(&self.shift)),
        }
    }

    fn input_vjp(&self, _inputs: &[&Tensor], output: &Tensor, grad: &Tensor) -> Result<Vec<Tensor>> {
        Ok(vec![match self.activation {
            Some(activation) => output.channel_affine_activation_vjp(grad, &self.scale, activation)?,
            None => grad.channel_affine(Some(&self.scale), None)?,
        }])
    }
}
