//! Conv2d: forward, input-VJP and the geometry both share.
//!
//! The input-VJP is a transposed convolution, computed as a plain convolution of the
//! zero-inserted output gradient with the spatially flipped, in/out-swapped kernel. This keeps
//! the backward pass on candle's fast im2col+gemm `conv2d` (its `conv_transpose2d` is a direct
//! loop on CPU) and lets any stride, padding, dilation and group count through.

use candle_core::Tensor;

use super::depthwise::{depthwise_correlate, depthwise_transposed};
use super::im2col::{col2im_transpose, im2col_correlate, Sliding};
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
        let (h, w) = (x.dim(2)?, x.dim(3)?);
        let out_hw = self.output_hw((h, w)).ok_or(Error::InputTooSmall {
            height: h,
            width: w,
            min: self.kernel.0.max(self.kernel.1),
        })?;
        if x.device().is_cpu() && x.dtype() == candle_core::DType::F32 {
            let sliding = Sliding {
                stride: self.stride,
                dilation: self.dilation,
                groups: self.groups,
                pad_top: t,
                pad_left: l,
                out_hw,
            };
            if self.is_depthwise(x.dim(1)?, kernel)? {
                return depthwise_correlate(x, kernel, sliding);
            }
            return im2col_correlate(x, kernel, sliding);
        }
        if t == b && l == r && t == l {
            return Ok(x.conv2d(kernel, t, self.stride, self.dilation, self.groups)?);
        }
        let padded = pad_or_crop_hw(x, t as isize, b as isize, l as isize, r as isize, 0.0)?;
        Ok(padded.conv2d(kernel, 0, self.stride, self.dilation, self.groups)?)
    }

    /// One filter per channel ([C, 1, kh, kw], C groups): the direct depthwise kernels apply.
    fn is_depthwise(&self, channels: usize, kernel: &Tensor) -> Result<bool> {
        Ok(self.groups > 1 && channels == self.groups && kernel.dim(0)? == self.groups && kernel.dim(1)? == 1)
    }

    /// The input-VJP of `correlate`: maps a gradient at the output back to an input of
    /// spatial size `input_hw`, for the same forward `kernel`. On CPU the columns
    /// kernel^T @ grad are scattered back (col2im); elsewhere it is a correlation of the
    /// zero-inserted gradient with the flipped, in/out-swapped kernel.
    pub fn correlate_transposed(&self, grad: &Tensor, kernel: &Tensor, input_hw: (usize, usize)) -> Result<Tensor> {
        if grad.device().is_cpu() && grad.dtype() == candle_core::DType::F32 {
            let (t, _, l, _) = self.padding;
            let sliding = Sliding {
                stride: self.stride,
                dilation: self.dilation,
                groups: self.groups,
                pad_top: t,
                pad_left: l,
                out_hw: (grad.dim(2)?, grad.dim(3)?),
            };
            if self.is_depthwise(grad.dim(1)?, kernel)? {
                return depthwise_transposed(grad, kernel, sliding, input_hw);
            }
            return col2im_transpose(grad, kernel, sliding, input_hw);
        }
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
        Ok(framed.conv2d(&self.transpose_kernel(kernel)?, 0, 1, self.dilation, self.groups)?)
    }

    /// In/out channels swapped per group and flipped in space: the kernel of the transposed
    /// convolution as a plain correlation.
    fn transpose_kernel(&self, kernel: &Tensor) -> Result<Tensor> {
        let (c_out, c_in_per_group, kh, kw) = kernel.dims4()?;
        let g = self.groups;
        let swapped = kernel
            .reshape((g, c_out / g, c_in_per_group, kh, kw))?
            .transpose(1, 2)?
            .reshape((g * c_in_per_group, c_out / g, kh, kw))?
            .contiguous()?;
        flip_hw(&swapped)
    }
}

#[derive(Debug, Clone)]
pub struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    geometry: WindowGeometry,
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
        let y = self.geometry.correlate(x, &self.weight)?;
        match &self.bias {
            Some(b) => Ok(y.broadcast_add(&b.reshape((1, (), 1, 1))?)?),
            None => Ok(y),
        }
    }

    /// Gradient of `sum(grad * self(x))` with respect to `x`, for an input of `input_hw` pixels.
    pub fn transpose_apply(&self, grad: &Tensor, input_hw: (usize, usize)) -> Result<Tensor> {
        self.geometry.correlate_transposed(grad, &self.weight, input_hw)
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
