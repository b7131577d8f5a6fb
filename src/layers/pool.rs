//! Pooling layers. Max pooling is a backend kernel (PyTorch's padding, dilation, ceil_mode
//! and tie rule); adaptive max pooling is built from it. Average and adaptive average pooling
//! are both means over separable windows ([`WindowBins`]) with PyTorch's bin edges and
//! divisors.

use super::{Layer, Narrow};
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
    fn axis(out: usize, len: usize) -> AxisBins {
        let ranges = adaptive_ranges(out, len);
        AxisBins {
            counts: ranges.iter().map(|(start, end)| end - start).collect(),
            ranges,
        }
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

/// PyTorch's adaptive bins: output i covers [floor(i*len/out), ceil((i+1)*len/out)).
fn adaptive_ranges(out: usize, len: usize) -> Vec<(usize, usize)> {
    (0..out)
        .map(|i| (i * len / out, ((i + 1) * len).div_ceil(out)))
        .collect()
}

/// `nn.AdaptiveMaxPool2d`. A maximum over a rectangle is the maximum over its rows of each
/// row's maximum, so the bins are pooled along W and then along H with the max-pooling kernel.
/// That order also keeps PyTorch's tie rule (the first maximum in row-major order): along W
/// each row keeps its first maximum, and along H the first row holding the maximum wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdaptiveMaxPool2d {
    pub output: (usize, usize),
}

/// One axis's bins: one max-pooling window sliding evenly when the length divides, else one
/// window per bin.
struct AxisPool {
    axis: usize,
    ranges: Vec<(usize, usize)>,
}

impl AxisPool {
    fn window(&self, len: usize, stride: usize) -> PoolWindow {
        let (kernel, stride) = match self.axis {
            2 => ((len, 1), (stride, 1)),
            _ => ((1, len), (1, stride)),
        };
        PoolWindow {
            kernel,
            stride,
            padding: (0, 0),
            dilation: (1, 1),
            ceil_mode: false,
        }
    }

    /// The common width of evenly spaced, non-overlapping bins.
    fn even(&self) -> Option<usize> {
        let width = self.ranges.first().map(|(s, e)| e - s)?;
        self.ranges
            .iter()
            .enumerate()
            .all(|(i, &(s, e))| s == i * width && e == s + width)
            .then_some(width)
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if let Some(width) = self.even() {
            return x.max_pool(&self.window(width, width));
        }
        let pieces = self
            .ranges
            .iter()
            .map(|&(start, end)| {
                x.narrow(self.axis, start, end - start)?
                    .max_pool(&self.window(end - start, 1))
            })
            .collect::<Result<Vec<_>>>()?;
        Tensor::cat(&pieces, self.axis)
    }

    /// Bins may overlap: each bin's gradient is put back in place and the pieces summed.
    fn vjp(&self, x: &Tensor, grad: &Tensor) -> Result<Tensor> {
        if let Some(width) = self.even() {
            return x.max_pool_vjp(grad, &self.window(width, width));
        }
        let mut total: Option<Tensor> = None;
        for (i, &(start, end)) in self.ranges.iter().enumerate() {
            let len = end - start;
            let piece = x.narrow(self.axis, start, len)?;
            let local = piece.max_pool_vjp(&grad.narrow(self.axis, i, 1)?, &self.window(len, 1))?;
            let narrow = Narrow {
                axis: self.axis,
                start,
                len,
            };
            let placed = narrow.input_vjp(&[x], &piece, &local)?.remove(0);
            total = Some(match total {
                Some(sum) => sum.add(&placed)?,
                None => placed,
            });
        }
        total.ok_or_else(|| Error::Shape("adaptive max pooling to an output of size 0".into()))
    }
}

impl AdaptiveMaxPool2d {
    fn axes(&self, x: &Tensor) -> Result<[AxisPool; 2]> {
        let (_, _, h, w) = x.dims4()?;
        if h == 0 || w == 0 {
            return Err(Error::InputTooSmall {
                height: h,
                width: w,
                min: 1,
            });
        }
        Ok([
            AxisPool {
                axis: 3,
                ranges: adaptive_ranges(self.output.1, w),
            },
            AxisPool {
                axis: 2,
                ranges: adaptive_ranges(self.output.0, h),
            },
        ])
    }
}

impl Layer for AdaptiveMaxPool2d {
    fn forward(&self, inputs: &[&Tensor]) -> Result<Tensor> {
        let [cols, rows] = self.axes(inputs[0])?;
        rows.forward(&cols.forward(inputs[0])?)
    }

    fn input_vjp(&self, inputs: &[&Tensor], _output: &Tensor, grad: &Tensor) -> Result<Vec<Tensor>> {
        let x = inputs[0];
        let [cols, rows] = self.axes(x)?;
        let row_maxima = cols.forward(x)?;
        Ok(vec![cols.vjp(x, &rows.vjp(&row_maxima, grad)?)?])
    }
}
