//! Convolution as im2col + one batched gemm on CPU. candle 0.11's CPU `conv2d` transposes the
//! whole batch to NHWC on one thread and gathers its patches element by element; gathering
//! NCHW rows (contiguous runs when the stride is 1) in parallel and handing one batched
//! matmul to gemm is several times faster for the 3x3 and 7x7 layers of ResNet and VGG.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::error::Result;

/// Correlates `x` [N, C, H, W] (already padded) with `kernel` [C_out, C/groups, kh, kw].
pub fn im2col_correlate(x: &Tensor, kernel: &Tensor, stride: usize, dilation: usize, groups: usize) -> Result<Tensor> {
    let (n, c, _, _) = x.dims4()?;
    let (c_out, c_per_group, kh, kw) = kernel.dims4()?;
    let columns = x.contiguous()?.apply_op1_no_bwd(&Im2Col {
        kh,
        kw,
        stride,
        dilation,
    })?;
    let (_, rows, pixels) = columns.dims3()?;
    let (oh, ow) = (columns_hw(x, kh, kw, stride, dilation))?;
    debug_assert_eq!(rows, c * kh * kw);
    debug_assert_eq!(pixels, oh * ow);
    let k = c_per_group * kh * kw;
    let out = if groups == 1 {
        kernel.reshape((c_out, k))?.broadcast_matmul(&columns)?
    } else {
        let columns = columns.reshape((n, groups, k, pixels))?;
        kernel
            .reshape((groups, c_out / groups, k))?
            .broadcast_matmul(&columns)?
    };
    Ok(out.reshape((n, c_out, oh, ow))?)
}

fn columns_hw(x: &Tensor, kh: usize, kw: usize, stride: usize, dilation: usize) -> Result<(usize, usize)> {
    let (h, w) = (x.dim(2)?, x.dim(3)?);
    Ok((
        (h - dilation * (kh - 1) - 1) / stride + 1,
        (w - dilation * (kw - 1) - 1) / stride + 1,
    ))
}

/// [N, C, H, W] -> [N, C*kh*kw, Ho*Wo], rows ordered (c, kh, kw) as a flattened kernel is.
struct Im2Col {
    kh: usize,
    kw: usize,
    stride: usize,
    dilation: usize,
}

impl CustomOp1 for Im2Col {
    fn name(&self) -> &'static str {
        "im2col"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = layout.shape().dims4()?;
        let CpuStorage::F32(x) = storage else {
            candle_core::bail!("im2col supports f32 only");
        };
        let x = &x[layout.start_offset()..];
        let Self {
            kh,
            kw,
            stride: s,
            dilation: d,
        } = *self;
        if h < d * (kh - 1) + 1 || w < d * (kw - 1) + 1 {
            candle_core::bail!("im2col input {h}x{w} smaller than the kernel span");
        }
        let oh = (h - d * (kh - 1) - 1) / s + 1;
        let ow = (w - d * (kw - 1) - 1) / s + 1;
        let pixels = oh * ow;
        let mut out = vec![0f32; n * c * kh * kw * pixels];
        out.par_chunks_mut(kh * kw * pixels)
            .enumerate()
            .for_each(|(plane, dst)| {
                let src = &x[plane * h * w..(plane + 1) * h * w];
                for a in 0..kh {
                    for b in 0..kw {
                        let row = &mut dst[(a * kw + b) * pixels..(a * kw + b + 1) * pixels];
                        for (i, out_row) in row.chunks_mut(ow).enumerate() {
                            let start = (i * s + a * d) * w + b * d;
                            if s == 1 {
                                out_row.copy_from_slice(&src[start..start + ow]);
                            } else {
                                for (j, v) in out_row.iter_mut().enumerate() {
                                    *v = src[start + j * s];
                                }
                            }
                        }
                    }
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((n, c * kh * kw, pixels))))
    }
}
