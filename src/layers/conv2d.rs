//! Conv2d: forward, input-VJP and the geometry both share.
//!
//! The input-VJP is a transposed convolution, computed as a plain convolution of the
//! zero-inserted output gradient with the spatially flipped, in/out-swapped kernel. This keeps
//! the backward pass on candle's fast im2col+gemm `conv2d` (its `conv_transpose2d` is a direct
//! loop on CPU) and lets any stride, padding, dilation and group count through.

use candle_core::Tensor;

use super::depthwise::depthwise_correlate;
use super::im2col::im2col_correlate;
use super::Layer;
use crate::error::{Error, Result};
use crate::ops::{flip_hw, insert_zeros_hw, pad_or_crop_hw};

/// Where a sliding window goes: the part of a convolution or pooling layer that is not weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowGeometry {
    pub kernel: (usize, usize),
    /// candle's convolution takes one stride and one dilation for both axes.
    pub stride: usize,
    pub dilation: usize,
    /// (top, bottom, left, right) zero padding.
    pub padding: (usize, usize, usize, usize),
    pub groups: usize,
}

impl WindowGeometry {
    pub fn output_hw(&self, (h, w): (usize, usize)) -> Option<(usize, usize)> {
        let (kh, kw) = self.kernel;
        let (t, b, l, r) = self.padding;
        let span_h = self.dilation * (kh - 1) + 1;
        let span_w = self.dilation * (kw - 1) + 1;
        let (ph, pw) = (h + t + b, w + l + r);
        if ph < span_h || pw < span_w {
            return None;
        }
        Some(((ph - span_h) / self.stride + 1, (pw - span_w) / self.stride + 1))
    }

    /// Correlates `x` with `kernel` ([C_out, C_in/groups, kh, kw]) under this geometry.
    pub fn correlate(&self, x: &Tensor, kernel: &Tensor) -> Result<Tensor> {
        let (t, b, l, r) = self.padding;
        if t == b && l == r && t == l && !x.device().is_cpu() {
            return Ok(x.conv2d(kernel, t, self.stride, self.dilation, self.groups)?);
        }
        let padded = pad_or_crop_hw(x, t as isize, b as isize, l as isize, r as isize, 0.0)?;
        self.correlate_unpadded(&padded, kernel, self.stride)
    }

    fn is_depthwise(&self, x: &Tensor, kernel: &Tensor) -> Result<bool> {
        Ok(self.groups > 1 && kernel.dim(0)? == self.groups && x.dim(1)? == self.groups)
    }

    /// Correlation of an already padded input; depthwise layers on CPU take the direct kernel.
    fn correlate_unpadded(&self, x: &Tensor, kernel: &Tensor, stride: usize) -> Result<Tensor> {
        let cpu_f32 = x.device().is_cpu() && x.dtype() == candle_core::DType::F32;
        if cpu_f32 && self.is_depthwise(x, kernel)? {
            return depthwise_correlate(x, kernel, stride, self.dilation);
        }
        let pointwise = self.kernel == (1, 1) && stride == 1;
        if cpu_f32 && !pointwise {
            return im2col_correlate(x, kernel, stride, self.dilation, self.groups);
        }
        Ok(x.conv2d(kernel, 0, stride, self.dilation, self.groups)?)
    }

    /// The kernel that `correlate_transposed` expects: in/out channels swapped per group and
    /// flipped in space. Computed once per weight tensor.
    pub fn transpose_kernel(&self, kernel: &Tensor) -> Result<Tensor> {
        let (c_out, c_in_per_group, kh, kw) = kernel.dims4()?;
        let g = self.groups;
        let swapped = kernel
            .reshape((g, c_out / g, c_in_per_group, kh, kw))?
            .transpose(1, 2)?
            .reshape((g * c_in_per_group, c_out / g, kh, kw))?
            .contiguous()?;
        flip_hw(&swapped)
    }

    /// The input-VJP of `correlate`: maps a gradient at the output back to an input of
    /// spatial size `input_hw`. `transposed_kernel` comes from `transpose_kernel`.
    pub fn correlate_transposed(
        &self,
        grad: &Tensor,
        transposed_kernel: &Tensor,
        input_hw: (usize, usize),
    ) -> Result<Tensor> {
        let (kh, kw) = self.kernel;
        let (t, _, l, _) = self.padding;
        let spread = insert_zeros_hw(grad, self.stride, self.stride)?;
        let (sh, sw) = (spread.dim(2)?, spread.dim(3)?);
        let reach_h = (self.dilation * (kh - 1)) as isize;
        let reach_w = (self.dilation * (kw - 1)) as isize;
        let top = reach_h - t as isize;
        let left = reach_w - l as isize;
        let bottom = input_hw.0 as isize - sh as isize + reach_h - top;
        let right = input_hw.1 as isize - sw as isize + reach_w - left;
        let framed = pad_or_crop_hw(&spread, top, bottom, left, right, 0.0)?;
        self.correlate_unpadded(&framed, transposed_kernel, 1)
    }
}

#[derive(Debug, Clone)]
pub struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    geometry: WindowGeometry,
    transposed_weight: Tensor,
}

impl Conv2d {
    pub fn new(weight: Tensor, bias: Option<Tensor>, geometry: WindowGeometry) -> Result<Self> {
        let (c_out, _, kh, kw) = weight.dims4()?;
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
        let transposed_weight = geometry.transpose_kernel(&weight)?;
        Ok(Self {
            weight,
            bias,
            geometry,
            transposed_weight,
        })
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
        let y = self.geometry.correlate(x, &self.weight)?;
        match &self.bias {
            Some(b) => Ok(y.broadcast_add(&b.reshape((1, (), 1, 1))?)?),
            None => Ok(y),
        }
    }

    /// Gradient of `sum(grad * self(x))` with respect to `x`, for an input of `input_hw` pixels.
    pub fn transpose_apply(&self, grad: &Tensor, input_hw: (usize, usize)) -> Result<Tensor> {
        self.geometry
            .correlate_transposed(grad, &self.transposed_weight, input_hw)
    }
}

impl Layer for Conv2d {
    fn forward(&self, inputs: &[&Tensor]) -> Result<Tensor> {
        let x = inputs[0];
        let c = x.dim(1)?;
        if c != self.in_channels() {
            return Err(Error::InvalidGraph(format!(
                "convolution expects {} input channels, got {c}",
                self.in_channels()
            )));
        }
        let (h, w) = (x.dim(2)?, x.dim(3)?);
        if self.geometry.output_hw((h, w)).is_none() {
            let (kh, kw) = self.geometry.kernel;
            return Err(Error::InputTooSmall {
                height: h,
                width: w,
                min: kh.max(kw),
            });
        }
        self.apply(x)
    }

    fn input_vjp(&self, inputs: &[&Tensor], _output: &Tensor, grad: &Tensor) -> Result<Vec<Tensor>> {
        let (_, _, h, w) = inputs[0].dims4()?;
        Ok(vec![self.transpose_apply(grad, (h, w))?])
    }
}
