//! Pooling layers. Max and average pooling share one mechanism: the windows are gathered by
//! a convolution with one-hot kernels ([N*C, k*k, Ho, Wo]), reduced, and the gradient goes
//! back through the same convolution's transpose. This supports kernel != stride, padding,
//! dilation and ceil_mode on every candle device, and gives max pooling PyTorch's tie rule:
//! the first maximum in row-major window order takes the whole gradient.
//!
//! Adaptive average pooling is separable: out = A_h x A_w^T with PyTorch's bin edges.

use candle_core::{DType, Device, Tensor, D};

use super::conv2d::WindowGeometry;
use super::elementwise::on_cpu_f32;
use super::max_pool_cpu::{max_pool, max_pool_vjp};
use super::Layer;
use crate::error::{Error, Result};
use crate::ops::pad_or_crop_hw;

/// A pooling window as PyTorch describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolWindow {
    pub kernel: (usize, usize),
    pub stride: (usize, usize),
    pub padding: (usize, usize),
    pub dilation: (usize, usize),
    pub ceil_mode: bool,
}

/// The window laid over one input size: how much to pad on each side and what comes out.
struct WindowPlan {
    geometry: WindowGeometry,
    /// (top, bottom, left, right) of PyTorch's own padding.
    padding: (usize, usize, usize, usize),
    /// Extra (bottom, right) cells that ceil_mode windows reach past the padded input.
    overhang: (usize, usize),
    input_hw: (usize, usize),
}

fn pooled_len(len: usize, k: usize, s: usize, p: usize, d: usize, ceil: bool) -> Option<(usize, usize)> {
    let span = d * (k - 1) + 1;
    if len + 2 * p < span {
        return None;
    }
    let room = len + 2 * p - span;
    let mut out = if ceil { room.div_ceil(s) } else { room / s } + 1;
    // PyTorch: the last window must start inside the input or its left padding.
    if ceil && (out - 1) * s >= len + p {
        out -= 1;
    }
    let overhang = ((out - 1) * s + span).saturating_sub(len + 2 * p);
    Some((out, overhang))
}

impl PoolWindow {
    pub fn validate(&self, layer: &str) -> Result<()> {
        let unsupported = |reason: &str| Error::UnsupportedLayer {
            layer: layer.to_string(),
            kind: "pooling".into(),
            reason: reason.into(),
        };
        if self.stride.0 != self.stride.1 || self.dilation.0 != self.dilation.1 {
            return Err(unsupported("different strides or dilations along height and width"));
        }
        if self.kernel.0 == 0 || self.kernel.1 == 0 || self.stride.0 == 0 || self.dilation.0 == 0 {
            return Err(unsupported("zero kernel size, stride or dilation"));
        }
        if self.padding.0 * 2 > self.kernel.0 || self.padding.1 * 2 > self.kernel.1 {
            return Err(unsupported(
                "padding must be at most half the kernel size (as in PyTorch)",
            ));
        }
        Ok(())
    }

    pub fn output_hw(&self, (h, w): (usize, usize)) -> Option<(usize, usize)> {
        let (oh, _) = pooled_len(
            h,
            self.kernel.0,
            self.stride.0,
            self.padding.0,
            self.dilation.0,
            self.ceil_mode,
        )?;
        let (ow, _) = pooled_len(
            w,
            self.kernel.1,
            self.stride.1,
            self.padding.1,
            self.dilation.1,
            self.ceil_mode,
        )?;
        Some((oh, ow))
    }

    fn plan(&self, (h, w): (usize, usize)) -> Result<WindowPlan> {
        let too_small = || Error::InputTooSmall {
            height: h,
            width: w,
            min: self.kernel.0.max(self.kernel.1),
        };
        let (_, over_h) = pooled_len(
            h,
            self.kernel.0,
            self.stride.0,
            self.padding.0,
            self.dilation.0,
            self.ceil_mode,
        )
        .ok_or_else(too_small)?;
        let (_, over_w) = pooled_len(
            w,
            self.kernel.1,
            self.stride.1,
            self.padding.1,
            self.dilation.1,
            self.ceil_mode,
        )
        .ok_or_else(too_small)?;
        let (ph, pw) = self.padding;
        Ok(WindowPlan {
            geometry: WindowGeometry {
                kernel: self.kernel,
                stride: self.stride.0,
                dilation: self.dilation.0,
                padding: (0, 0, 0, 0),
                groups: 1,
            },
            padding: (ph, ph, pw, pw),
            overhang: (over_h, over_w),
            input_hw: (h, w),
        })
    }
}

impl WindowPlan {
    fn window_len(&self) -> usize {
        self.geometry.kernel.0 * self.geometry.kernel.1
    }

    /// [k*k, 1, kh, kw]: kernel i picks the i-th cell of the window (row-major).
    fn selector(&self, device: &Device) -> Result<Tensor> {
        let (kh, kw) = self.geometry.kernel;
        let n = kh * kw;
        let mut data = vec![0f32; n * n];
        for i in 0..n {
            data[i * n + i] = 1.0;
        }
        Ok(Tensor::from_vec(data, (n, 1, kh, kw), device)?)
    }

    fn padded_hw(&self) -> (usize, usize) {
        let (t, b, l, r) = self.padding;
        (
            self.input_hw.0 + t + b + self.overhang.0,
            self.input_hw.1 + l + r + self.overhang.1,
        )
    }

    /// Pads [M, 1, H, W] with `pad_value` in PyTorch's padding and `overhang_value` where
    /// ceil_mode windows hang past it.
    fn frame(&self, x: &Tensor, pad_value: f32, overhang_value: f32) -> Result<Tensor> {
        let (t, b, l, r) = self.padding;
        let x = pad_or_crop_hw(x, t as isize, b as isize, l as isize, r as isize, pad_value)?;
        pad_or_crop_hw(
            &x,
            0,
            self.overhang.0 as isize,
            0,
            self.overhang.1 as isize,
            overhang_value,
        )
    }

    /// [N, C, H, W] -> [N*C, k*k, Ho, Wo].
    fn gather(&self, x: &Tensor, pad_value: f32) -> Result<Tensor> {
        let (n, c, h, w) = x.dims4()?;
        let framed = self.frame(&x.reshape((n * c, 1, h, w))?, pad_value, pad_value)?;
        self.geometry.correlate(&framed, &self.selector(x.device())?)
    }

    /// Transpose of `gather`: [N*C, k*k, Ho, Wo] -> [N, C, H, W].
    fn scatter(&self, windows: &Tensor, n: usize, c: usize) -> Result<Tensor> {
        let framed =
            self.geometry
                .correlate_transposed(windows, &self.selector(windows.device())?, self.padded_hw())?;
        let (t, b, l, r) = self.padding;
        let x = pad_or_crop_hw(
            &framed,
            -(t as isize),
            -((b + self.overhang.0) as isize),
            -(l as isize),
            -((r + self.overhang.1) as isize),
            0.0,
        )?;
        let (h, w) = self.input_hw;
        Ok(x.reshape((n, c, h, w))?)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxPool2d {
    pub window: PoolWindow,
}

impl MaxPool2d {
    /// One-hot [N*C, k*k, Ho, Wo] marking the first maximum of each window.
    fn winners(windows: &Tensor, window_len: usize) -> Result<Tensor> {
        let first_max = windows.argmax_keepdim(1)?;
        let slots = Tensor::arange(0u32, window_len as u32, windows.device())?.reshape((1, window_len, 1, 1))?;
        Ok(slots.broadcast_eq(&first_max)?.to_dtype(DType::F32)?)
    }
}

impl Layer for MaxPool2d {
    fn forward(&self, inputs: &[&Tensor]) -> Result<Tensor> {
        let x = inputs[0];
        if on_cpu_f32(x) {
            let out_hw = self
                .window
                .output_hw((x.dim(2)?, x.dim(3)?))
                .ok_or(Error::InputTooSmall {
                    height: x.dim(2)?,
                    width: x.dim(3)?,
                    min: self.window.kernel.0.max(self.window.kernel.1),
                })?;
            return max_pool(x, self.window, out_hw);
        }
        let (n, c, _, _) = x.dims4()?;
        let plan = self.window.plan((x.dim(2)?, x.dim(3)?))?;
        let pooled = plan.gather(x, f32::MIN)?.max(1)?;
        let (ho, wo) = (pooled.dim(1)?, pooled.dim(2)?);
        Ok(pooled.reshape((n, c, ho, wo))?)
    }

    fn input_vjp(&self, inputs: &[&Tensor], _output: &Tensor, grad: &Tensor) -> Result<Vec<Tensor>> {
        let x = inputs[0];
        if on_cpu_f32(x) {
            return Ok(vec![max_pool_vjp(x, grad, self.window)?]);
        }
        let (n, c, _, _) = x.dims4()?;
        let plan = self.window.plan((x.dim(2)?, x.dim(3)?))?;
        let winners = Self::winners(&plan.gather(x, f32::MIN)?, plan.window_len())?;
        let (_, _, ho, wo) = grad.dims4()?;
        let routed = winners.broadcast_mul(&grad.reshape((n * c, 1, ho, wo))?)?;
        Ok(vec![plan.scatter(&routed, n, c)?])
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AvgPool2d {
    pub window: PoolWindow,
    pub count_include_pad: bool,
    pub divisor_override: Option<usize>,
}

impl AvgPool2d {
    /// [1, 1, Ho, Wo]: how many cells PyTorch divides each window's sum by.
    fn divisors(&self, plan: &WindowPlan, device: &Device) -> Result<Tensor> {
        if let Some(d) = self.divisor_override {
            return Ok(Tensor::new(&[[[[d as f32]]]], device)?);
        }
        let (h, w) = plan.input_hw;
        let ones = Tensor::ones((1, 1, h, w), DType::F32, device)?;
        let padding_counts = if self.count_include_pad { 1.0 } else { 0.0 };
        let framed = plan.frame(&ones, padding_counts, 0.0)?;
        Ok(plan
            .geometry
            .correlate(&framed, &plan.selector(device)?)?
            .sum_keepdim(1)?)
    }
}

impl Layer for AvgPool2d {
    fn forward(&self, inputs: &[&Tensor]) -> Result<Tensor> {
        let x = inputs[0];
        let (n, c, _, _) = x.dims4()?;
        let plan = self.window.plan((x.dim(2)?, x.dim(3)?))?;
        let sums = plan.gather(x, 0.0)?.sum_keepdim(1)?;
        let pooled = sums.broadcast_div(&self.divisors(&plan, x.device())?)?;
        let (ho, wo) = (pooled.dim(2)?, pooled.dim(3)?);
        Ok(pooled.reshape((n, c, ho, wo))?)
    }

    fn input_vjp(&self, inputs: &[&Tensor], _output: &Tensor, grad: &Tensor) -> Result<Vec<Tensor>> {
        let x = inputs[0];
        let (n, c, _, _) = x.dims4()?;
        let plan = self.window.plan((x.dim(2)?, x.dim(3)?))?;
        let (_, _, ho, wo) = grad.dims4()?;
        let per_cell = grad
            .reshape((n * c, 1, ho, wo))?
            .broadcast_div(&self.divisors(&plan, x.device())?)?
            .broadcast_as((n * c, plan.window_len(), ho, wo))?
            .contiguous()?;
        Ok(vec![plan.scatter(&per_cell, n, c)?])
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdaptiveAvgPool2d {
    pub output: (usize, usize),
}

impl AdaptiveAvgPool2d {
    /// [out, len]: row i averages PyTorch's bin [floor(i*len/out), ceil((i+1)*len/out)).
    fn bins(out: usize, len: usize, device: &Device) -> Result<Tensor> {
        let mut data = vec![0f32; out * len];
        for i in 0..out {
            let start = i * len / out;
            let end = ((i + 1) * len).div_ceil(out);
            for j in start..end {
                data[i * len + j] = 1.0 / (end - start) as f32;
            }
        }
        Ok(Tensor::from_vec(data, (out, len), device)?)
    }

    fn matrices(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let (h, w) = (x.dim(2)?, x.dim(3)?);
        let rows = Self::bins(self.output.0, h, x.device())?;
        let cols = Self::bins(self.output.1, w, x.device())?;
        Ok((rows, cols))
    }
}

impl Layer for AdaptiveAvgPool2d {
    fn forward(&self, inputs: &[&Tensor]) -> Result<Tensor> {
        let x = inputs[0];
        x.dims4()?;
        if self.output == (1, 1) {
            return Ok(x.mean_keepdim(D::Minus1)?.mean_keepdim(D::Minus2)?);
        }
        let (rows, cols) = self.matrices(x)?;
        Ok(rows.broadcast_matmul(&x.broadcast_matmul(&cols.t()?)?)?)
    }

    fn input_vjp(&self, inputs: &[&Tensor], _output: &Tensor, grad: &Tensor) -> Result<Vec<Tensor>> {
        let x = inputs[0];
        if self.output == (1, 1) {
            let hw = (x.dim(2)? * x.dim(3)?) as f64;
            return Ok(vec![grad
                .affine(1.0 / hw, 0.0)?
                .broadcast_as(x.dims())?
                .contiguous()?]);
        }
        let (rows, cols) = self.matrices(x)?;
        Ok(vec![rows.t()?.broadcast_matmul(&grad.broadcast_matmul(&cols)?)?])
    }
}
