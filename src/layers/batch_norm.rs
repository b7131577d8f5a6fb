//! BatchNorm2d in eval mode: a per-channel affine map with the running statistics.

use candle_core::Tensor;

use super::elementwise::{channel_affine, on_cpu_f32};
use super::Layer;
use crate::error::{Error, Result};

#[derive(Debug, Clone)]
pub struct BatchNorm2d {
    eps: f64,
    /// weight / sqrt(var + eps), shaped [1, C, 1, 1].
    scale: Tensor,
    /// bias - mean * scale, shaped [1, C, 1, 1].
    shift: Tensor,
    /// Both on the host, for the single-pass CPU kernel.
    host_scale: Vec<f32>,
    host_shift: Vec<f32>,
}

impl BatchNorm2d {
    pub fn new(weight: Tensor, bias: Tensor, running_mean: Tensor, running_var: Tensor, eps: f64) -> Result<Self> {
        let c = running_mean.dims1()?;
        for (name, t) in [("weight", &weight), ("bias", &bias), ("running_var", &running_var)] {
            if t.dims() != [c] {
                return Err(Error::InvalidGraph(format!(
                    "batch norm {name} has shape {:?}, expected [{c}]",
                    t.dims()
                )));
            }
        }
        let scale = (&weight / running_var.affine(1.0, eps)?.sqrt()?)?;
        let shift = (&bias - (&running_mean * &scale)?)?;
        Ok(Self {
            host_scale: scale.to_vec1::<f32>()?,
            host_shift: shift.to_vec1::<f32>()?,
            scale: scale.reshape((1, c, 1, 1))?,
            shift: shift.reshape((1, c, 1, 1))?,
            eps,
        })
    }

    pub fn channels(&self) -> usize {
        self.scale.dims()[1]
    }

    pub fn eps(&self) -> f64 {
        self.eps
    }

    /// Per-channel (scale, shift) of the affine map this layer applies, each [C].
    pub fn affine_parameters(&self) -> Result<(Tensor, Tensor)> {
        Ok((self.scale.flatten_all()?, self.shift.flatten_all()?))
    }

    /// What zennit 0.5 leaves of a merged BatchNorm: weight 1, bias 0, mean 0, var 1, but the
    /// original eps — so it still divides by sqrt(1 + eps).
    pub fn identity(channels: usize, eps: f64, device: &candle_core::Device) -> Result<Self> {
        let ones = Tensor::ones(channels, candle_core::DType::F32, device)?;
        let zeros = Tensor::zeros(channels, candle_core::DType::F32, device)?;
        Self::new(ones.clone(), zeros.clone(), zeros, ones, eps)
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
        if on_cpu_f32(x) {
            return channel_affine(x, &self.host_scale, &self.host_shift);
        }
        Ok(x.broadcast_mul(&self.scale)?.broadcast_add(&self.shift)?)
    }

    fn input_vjp(&self, _inputs: &[&Tensor], _output: &Tensor, grad: &Tensor) -> Result<Vec<Tensor>> {
        if on_cpu_f32(grad) {
            return Ok(vec![channel_affine(
                grad,
                &self.host_scale,
                &vec![0.0; self.host_scale.len()],
            )?]);
        }
        Ok(vec![grad.broadcast_mul(&self.scale)?])
    }
}
