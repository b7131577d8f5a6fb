//! Where a sliding window goes: the geometry of convolutions and pooling, which the layers
//! describe and the backends' kernels follow. It lives here, at the bottom of the crate, so the
//! backends need nothing from the layers above them.

use crate::error::{Error, Result};

/// Where a sliding window goes: the part of a convolution or pooling layer that is not weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowGeometry {
    pub kernel: (usize, usize),
    /// One stride and one dilation for both axes (as candle's convolution takes them).
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
}

/// A pooling window as PyTorch describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolWindow {
    pub kernel: (usize, usize),
    pub stride: (usize, usize),
    pub padding: (usize, usize),
    pub dilation: (usize, usize),
    pub ceil_mode: bool,
}

/// PyTorch's pooled length: floor((len + 2p - span (+ s - 1 in ceil mode)) / s) + 1, rounding
/// toward minus infinity, so in ceil mode a window may be wider than the padded input (the
/// smallest SqueezeNet input ends on one); None when no window fits.
fn pooled_len(len: usize, k: usize, s: usize, p: usize, d: usize, ceil: bool) -> Option<usize> {
    let span = d * (k - 1) + 1;
    let extra = if ceil { s - 1 } else { 0 };
    let room = (len + 2 * p + extra).checked_sub(span)?;
    let mut out = room / s + 1;
    // PyTorch: the last window must start inside the input or its left padding.
    if ceil && (out - 1) * s >= len + p {
        out -= 1;
    }
    (out > 0).then_some(out)
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
        let oh = pooled_len(
            h,
            self.kernel.0,
            self.stride.0,
            self.padding.0,
            self.dilation.0,
            self.ceil_mode,
        )?;
        let ow = pooled_len(
            w,
            self.kernel.1,
            self.stride.1,
            self.padding.1,
            self.dilation.1,
            self.ceil_mode,
        )?;
        Some((oh, ow))
    }
}

/// Separable windows whose mean a pooling layer takes: output row `i` covers input rows
/// `rows[i].0..rows[i].1` (likewise for columns), and is divided by
/// `row_counts[i] * col_counts[j]` (or by `divisor_override`). Average pooling with any
/// padding, ceil_mode and count_include_pad, and adaptive average pooling, are both this.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowBins {
    pub input_hw: (usize, usize),
    pub rows: Vec<(usize, usize)>,
    pub cols: Vec<(usize, usize)>,
    pub row_counts: Vec<usize>,
    pub col_counts: Vec<usize>,
    pub divisor_override: Option<usize>,
}

impl WindowBins {
    pub fn output_hw(&self) -> (usize, usize) {
        (self.rows.len(), self.cols.len())
    }

    /// The divisor of output cell (i, j).
    pub fn divisor(&self, i: usize, j: usize) -> f32 {
        match self.divisor_override {
            Some(d) => d as f32,
            None => (self.row_counts[i] * self.col_counts[j]) as f32,
        }
    }
}
