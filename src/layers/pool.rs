//! Pooling layers. Max pooling is a backend kernel (PyTorch's padding, dilation, ceil_mode
//! and tie rule). Average and adaptive average pooling are both means over separable windows
//! ([`WindowBins`]) with PyTorch's bin edges and divisors.

use super::Layer;
use crate::backend::{PoolWindow, WindowBins};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// PyTorch's average-pooling windows along one axis: [start, end) clipped to the input,
/// and the divisor's factor (counting the padding when `count_include_pad`).
fn average_bins(len: usize, out: usize, k: usize, s: usize, p: usize, count_pad: bool) -> AxisBins {
    let mut bins = AxisBins::default();
    for o in 0..out {
        let start = (o * s) as isize - p as isize;
        let end = (start + k as isize).min((len + p) as isize);
        let padded_count = (end - start) as usize;
        let (start, end) = (start.max(0) as usize, end.min(len as isize).max(0) as usize);
        bins.ranges.push((start, end.max(start)));
        bins.counts.push(if count_pad {
            padded_count
        } else {
            end.saturating_sub(start)
        });
    }
    bins
}

/// One axis of [`WindowBins`].
#[derive(Default)]
struct AxisBins {
    ranges: Vec<(usize, usize)>,
    counts: Vec<usize>,
}

fn window_bins(
    input_hw: (usize, usize),
    rows: AxisBins,
    cols: AxisBins,
    divisor_override: Option<usize>,
) -> WindowBins {
    WindowBins {
        input_hw,
        rows: rows.ranges,
        cols: cols.ranges,
        row_counts: rows.counts,
        col_counts: cols.counts,
        divisor_override,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxPool2d {
    pub window: PoolWindow,
}

impl Layer for MaxPool2d {
    fn forward(&self, inputs: &[&Tensor]) -> Result<Tensor> {
        inputs[0].max_pool(&self.window)
    }

    fn input_vjp(&self, inputs: &[&Tensor], _output: &Tensor, grad: &Tensor) -> Result<Vec<Tensor>> {
        Ok(vec![inputs[0].max_pool_vjp(grad, &self.window)?])
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AvgPool2d {
    pub window: PoolWindow,
    pub count_include_pad: bool,
    pub divisor_override: Option<usize>,
}

impl AvgPool2d {
    fn bins(&self, x: &Tensor) -> Result<WindowBins> {
        let (_, _, h, w) = x.dims4()?;
        let window = &self.window;
        let (oh, ow) = window.output_hw((h, w)).ok_or(Error::InputTooSmall {
            height: h,
            width: w,
            min: window.kernel.0.max(window.kernel.1),
        })?;
        let pad = self.count_include_pad;
        let rows = average_bins(h, oh, window.kernel.0, window.stride.0, window.padding.0, pad);
        let cols = average_bins(w, ow, window.kernel.1, window.stride.1, window.padding.1, pad);
        Ok(window_bins((h, w), rows, cols, self.divisor_override))
    }
}

impl Layer for AvgPool2d {
    fn forward(&self, inputs: &[&Tensor]) -> Result<Tensor> {
        inputs[0].window_mean(&self.bins(inputs[0])?)
    }

    fn input_vjp(&self, inputs: &[&Tensor], _output: &Tensor, grad: &Tensor) -> Result<Vec<Tensor>> {
        Ok(vec![grad.window_mean_vjp(&self.bins(inputs[0])?)?])
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdaptiveAvgPool2d {
    pub output: (usize, usize),
}

impl AdaptiveAvgPool2d {
    /// PyTorch's bins: output i averages [floor(i*len/out), ceil((i+1)*len/out)).
    fn axis(out: usize, len: usize) -> AxisBins {
        let mut bins = AxisBins::default();
        for i in 0..out {
            let (start, end) = (i * len / out, ((i + 1) * len).div_ceil(out));
            bins.ranges.push((start, end));
            bins.counts.push(end - start);
        }
        bins
    }

    fn bins(&self, x: &Tensor) -> Result<WindowBins> {
        let (_, _, h, w) = x.dims4()?;
        Ok(window_bins(
            (h, w),
            Self::axis(self.output.0, h),
            Self::axis(self.output.1, w),
            None,
        ))
    }
}

impl Layer for AdaptiveAvgPool2d {
    fn forward(&self, inputs: &[&Tensor]) -> Result<Tensor> {
        inputs[0].window_mean(&self.bins(inputs[0])?)
    }

    fn input_vjp(&self, inputs: &[&Tensor], _output: &Tensor, grad: &Tensor) -> Result<Vec<Tensor>> {
        Ok(vec![grad.window_mean_vjp(&self.bins(inputs[0])?)?])
    }
}
