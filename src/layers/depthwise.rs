//! A CPU kernel for depthwise convolution (groups == channels, one filter per channel).
//! candle's grouped `conv2d` runs one convolution per group, which for MobileNetV2's 960-group
//! layers is hundreds of tiny gemms; this direct loop is one parallel pass over the planes.
//! Other devices keep candle's grouped convolution.

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::error::Result;

/// Correlates `x` [N, C, H, W] with `kernel` [C, 1, kh, kw], no padding (the caller pads).
pub fn depthwise_correlate(x: &Tensor, kernel: &Tensor, stride: usize, dilation: usize) -> Result<Tensor> {
    let x = x.contiguous()?;
    let kernel = kernel.contiguous()?;
    Ok(x.apply_op2_no_bwd(&kernel, &Depthwise { stride, dilation })?)
}

struct Depthwise {
    stride: usize,
    dilation: usize,
}

impl CustomOp2 for Depthwise {
    fn name(&self) -> &'static str {
        "depthwise-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = l1.shape().dims4()?;
        let (kc, _, kh, kw) = l2.shape().dims4()?;
        if kc != c {
            candle_core::bail!("depthwise kernel has {kc} channels, input {c}");
        }
        let (x, k) = match (s1, s2) {
            (CpuStorage::F32(x), CpuStorage::F32(k)) => (&x[l1.start_offset()..], &k[l2.start_offset()..]),
            _ => candle_core::bail!("depthwise-conv2d supports f32 only"),
        };
        let (s, d) = (self.stride, self.dilation);
        let span_h = d * (kh - 1) + 1;
        let span_w = d * (kw - 1) + 1;
        if h < span_h || w < span_w {
            candle_core::bail!("depthwise input {h}x{w} smaller than the kernel span {span_h}x{span_w}");
        }
        let (oh, ow) = ((h - span_h) / s + 1, (w - span_w) / s + 1);
        let mut out = vec![0f32; n * c * oh * ow];
        out.par_chunks_mut(oh * ow).enumerate().for_each(|(plane, dst)| {
            let ch = plane % c;
            let src = &x[plane * h * w..(plane + 1) * h * w];
            let filter = &k[ch * kh * kw..(ch + 1) * kh * kw];
            for (i, row) in dst.chunks_mut(ow).enumerate() {
                for a in 0..kh {
                    let src_row = &src[(i * s + a * d) * w..];
                    for b in 0..kw {
                        let weight = filter[a * kw + b];
                        let offset = b * d;
                        for (j, out) in row.iter_mut().enumerate() {
                            *out += weight * src_row[j * s + offset];
                        }
                    }
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((n, c, oh, ow))))
    }
}
