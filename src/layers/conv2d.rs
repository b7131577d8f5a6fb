//! Conv2d: forward and input-VJP (a transposed convolution), with any stride, padding,
//! dilation and group count. The backends hold the kernels; the geometry both share is the
//! backend's [`WindowGeometry`].

use super::Layer;
use crate::backend::WindowGeometry;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

#[derive(Debug, Clone)]
pub struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    geometry: WindowGeometry,
}

impl Conv2d {
    pub fn new(weight: Tensor, bias: Option<Tensor>, geometry: WindowGeometry) -> Result<Self> {
        let (c_out, _, kh, kw) = weight.dims4().map_err(|_| {
            Error::InvalidGraph(format!(
                "conv weight has shape {:?}, expected 4 dimensions",
                weight.dims()
            ))
        })?;
        if (kh, kw) != geometry.kernel {
            return Err(Error::InvalidGraph(format!(
                "kernel_size {:?} does not match the weight's {kh}x{kw}",
                geometry.kernel
            )));
        }
        if geometry.groups == 0 || c_out % geometry.groups != 0 {
            return Err(Error::InvalidGraph(format!(
                "{c_out} output channels cannot be split into {} groups",
                geometry.groups
            )));
        }
        if let Some(bias) = &bias {
            if bias.dims() != [c_out] {
                return Err(Error::InvalidGraph(format!(
                    "conv bias has shape {:?}, expected [{c_out}]",
                    bias.dims()
                )));
            }
        }
        Ok(Self { weight, bias, geometry })
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    pub fn geometry(&self) -> &WindowGeometry {
        &self.geometry
    }

    pub fn in_channels(&self) -> usize {
        self.weight.dims()[1] * self.geometry.groups
    }

    pub fn out_channels(&self) -> usize {
        self.weight.dims()[0]
    }

    /// The same convolution with other parameters (LRP's parameter modifiers, BatchNorm folding).
    pub fn with_parameters(&self, weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        Self::new(weight, bias, self.geometry)
    }

    /// Forward with this layer's geometry and explicit parameters.
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let y = x.conv2d(&self.weight, &self.geometry)?;
        match &self.bias {
            Some(b) => y.channel_affine(None, Some(b)),
            None => Ok(y),
        }
    }

    /// Gradient of `sum(grad * self(x))` with respect to `x`, for an input of `input_hw` pixels.
    pub fn transpose_apply(&self, grad: &Tensor, input_hw: (usize, usize)) -> Result<Tensor> {
        grad.conv2d_transposed(&self.weight, &self.geometry, input_hw)
    }
}

impl Layer for Conv2d {
    fn forward(&self, inputs: &[&Tensor]) -> Result<Tensor> {
        self.apply(inputs[0])
    }

    fn input_vjp(&self, inputs: &[&Tensor], _output: &Tensor, grad: &Tensor) -> Result<Vec<Tensor>> {
        let (_, _, h, w) = inputs[0].dims4()?;
        Ok(vec![self.transpose_apply(grad, (h, w))?])
    }
}
