//! `nn.Upsample` / `F.interpolate` on NCHW in PyTorch's `nearest`, `nearest-exact` and
//! `bilinear` modes. Each is linear and separable: one interpolation matrix per axis, built
//! with PyTorch's float32 index arithmetic, applied as a matrix product along W and then H on
//! every backend. The input-VJP applies the same matrices transposed.

use super::Layer;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum UpsampleMode {
    /// src = floor(dst * scale)
    Nearest,
    /// src = floor((dst + 0.5) * scale)
    NearestExact,
    Bilinear {
        align_corners: bool,
    },
}

/// The output size, as `size` or as `scale_factor` (output = floor(input * factor); the
/// factor itself then sets the sampling, as PyTorch does without `recompute_scale_factor`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum UpsampleSize {
    Size(usize, usize),
    Scale(f64, f64),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Upsample {
    pub mode: UpsampleMode,
    pub size: UpsampleSize,
}

impl Upsample {
    pub fn output_hw(&self, (h, w): (usize, usize)) -> (usize, usize) {
        match self.size {
            UpsampleSize::Size(oh, ow) => (oh, ow),
            UpsampleSize::Scale(sh, sw) => ((h as f64 * sh).floor() as usize, (w as f64 * sw).floor() as usize),
        }
    }

    /// The [out, len] interpolation matrix of one axis.
    fn matrix(&self, len: usize, out: usize, factor: Option<f64>, like: &Tensor) -> Result<Tensor> {
        let mut weights = vec![0f32; out * len];
        // PyTorch's ratio (area_pixel_compute_scale), in float32 as its float32 kernels compute it.
        let ratio = |align_corners: bool| -> f32 {
            match (align_corners, factor) {
                (true, _) if out > 1 => (len as f32 - 1.0) / (out as f32 - 1.0),
                (true, _) => 0.0,
                (false, Some(f)) if f > 0.0 => (1.0 / f) as f32,
                (false, _) => len as f32 / out as f32,
            }
        };
        for dst in 0..out {
            let row = &mut weights[dst * len..(dst + 1) * len];
            match self.mode {
                _ if out == len => row[dst] = 1.0,
                UpsampleMode::Nearest => row[nearest_source(dst, ratio(false), len)] = 1.0,
                UpsampleMode::NearestExact => {
                    row[(((dst as f32 + 0.5) * ratio(false)).floor() as usize).min(len - 1)] = 1.0
                }
                UpsampleMode::Bilinear { align_corners } => {
                    let scale = ratio(align_corners);
                    let source = match align_corners {
                        true => scale * dst as f32,
                        false => (scale * (dst as f32 + 0.5) - 0.5).max(0.0),
                    };
                    let low = (source.floor() as usize).min(len - 1);
                    let high_weight = (source - low as f32).clamp(0.0, 1.0);
                    let high = (low + 1).min(len - 1);
                    row[low] += 1.0 - high_weight;
                    row[high] += high_weight;
                }
            }
        }
        like.device().tensor(&weights, &[out, len])
    }

    /// The two axes' matrices ([Ho, H], [Wo, W]) for an input of `x`'s size.
    fn matrices(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let (_, _, h, w) = x.dims4()?;
        let (oh, ow) = self.output_hw((h, w));
        if h == 0 || w == 0 || oh == 0 || ow == 0 {
            return Err(Error::Shape(format!(
                "upsampling {h}x{w} to {oh}x{ow}: every side must be at least 1"
            )));
        }
        let (fh, fw) = match self.size {
            UpsampleSize::Scale(sh, sw) => (Some(sh), Some(sw)),
            UpsampleSize::Size(..) => (None, None),
        };
        Ok((self.matrix(h, oh, fh, x)?, self.matrix(w, ow, fw, x)?))
    }
}

/// The source index PyTorch's `nearest` mode reads for output index `dst` along an axis of
/// `len`, with its float32 `ratio` (len / out, or 1 / scale factor).
pub(crate) fn nearest_source(dst: usize, ratio: f32, len: usize) -> usize {
    ((dst as f32 * ratio).floor() as usize).min(len - 1)
}

/// `matrix` ([out, len] or, transposed, [len, out]) applied along W and `rows` along H.
fn separable(x: &Tensor, rows: &Tensor, cols: &Tensor, transposed: bool) -> Result<Tensor> {
    const SWAP_HW: [usize; 4] = [0, 1, 3, 2];
    let along_w = x.matmul_last_axis(cols, !transposed)?;
    along_w
        .permute(&SWAP_HW)?
        .matmul_last_axis(rows, !transposed)?
        .permute(&SWAP_HW)
}

impl Layer for Upsample {
    fn forward(&self, inputs: &[&Tensor]) -> Result<Tensor> {
        let (rows, cols) = self.matrices(inputs[0])?;
        separable(inputs[0], &rows, &cols, false)
    }

    fn input_vjp(&self, inputs: &[&Tensor], _output: &Tensor, grad: &Tensor) -> Result<Vec<Tensor>> {
        let (rows, cols) = self.matrices(inputs[0])?;
        Ok(vec![separable(grad, &rows, &cols, true)?])
    }
}
