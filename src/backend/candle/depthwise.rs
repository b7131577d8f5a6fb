//! Depthwise convolution (groups == channels, one filter per channel) and its input-VJP, on
//! CPU and (with the `cuda` feature) CUDA. candle's grouped `conv2d`, like a per-group gemm,
//! runs one tiny product per channel — hundreds for MobileNetV2's layers; these direct loops
//! make one parallel pass over the planes, with the zero padding applied on the fly instead of
//! by a padded copy. The CUDA kernels (kernels.cu) add the taps in the CPU loops' order.

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::elementwise::f32_data;

use super::im2col::{valid_columns, Sliding};
use crate::error::Result;

/// Correlates `x` [N, C, H, W] with `kernel` [C, 1, kh, kw].
pub fn depthwise_correlate(x: &Tensor, kernel: &Tensor, sliding: Sliding) -> Result<Tensor> {
    let op = Depthwise {
        sliding,
        transposed_to: None,
    };
    Ok(x.contiguous()?.apply_op2_no_bwd(&kernel.contiguous()?, &op)?)
}

/// The input-VJP of `depthwise_correlate`: `grad` [N, C, Ho, Wo] back to [N, C, H, W].
pub fn depthwise_transposed(
    grad: &Tensor,
    kernel: &Tensor,
    sliding: Sliding,
    input_hw: (usize, usize),
) -> Result<Tensor> {
    let op = Depthwise {
        sliding,
        transposed_to: Some(input_hw),
    };
    Ok(grad.contiguous()?.apply_op2_no_bwd(&kernel.contiguous()?, &op)?)
}

struct Depthwise {
    sliding: Sliding,
    /// None: forward. Some(input size): the transpose, scattering back onto that size.
    transposed_to: Option<(usize, usize)>,
}

#[cfg(feature = "cuda")]
mod cuda_kernels {
    use candle_core::cuda_backend::cudarc::driver::DeviceRepr;

    /// kernels.cu's DepthwiseShape.
    #[repr(C)]
    pub struct DepthwiseShape {
        pub c: u32,
        pub h: u32,
        pub w: u32,
        pub oh: u32,
        pub ow: u32,
        pub kh: u32,
        pub kw: u32,
        pub stride: u32,
        pub dilation: u32,
        pub pad_top: u32,
        pub pad_left: u32,
    }

    // SAFETY: plain u32 fields, laid out as the C struct.
    unsafe impl DeviceRepr for DepthwiseShape {}
}

impl Depthwise {
    /// [N, C, H, W] of the output: the forward's [.., Ho, Wo], or the transpose's input size.
    fn output_dims(&self, (n, c): (usize, usize)) -> (usize, usize, usize, usize) {
        match self.transposed_to {
            None => (n, c, self.sliding.out_hw.0, self.sliding.out_hw.1),
            Some((h, w)) => (n, c, h, w),
        }
    }
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
        let (n, c, sh, sw) = l1.shape().dims4()?;
        let (kc, _, kh, kw) = l2.shape().dims4()?;
        if kc != c {
            candle_core::bail!("depthwise kernel has {kc} channels, input {c}");
        }
        let (src, k) = (
            f32_data(s1, l1, "depthwise-conv2d")?,
            f32_data(s2, l2, "depthwise-conv2d")?,
        );
        let Sliding {
            stride: s,
            dilation: d,
            pad_top,
            pad_left,
            out_hw: (oh, ow),
            ..
        } = self.sliding;
        // (h, w): the input image; the forward reads it, the transpose writes it.
        let ((h, w), out_len) = match self.transposed_to {
            None => ((sh, sw), oh * ow),
            Some((h, w)) => ((h, w), h * w),
        };
        if self.transposed_to.is_some() && (sh, sw) != (oh, ow) {
            candle_core::bail!("depthwise transpose: gradient {sh}x{sw}, expected {oh}x{ow}");
        }
        let mut out = vec![0f32; n * c * out_len];
        let in_len = sh * sw;
        out.par_chunks_mut(out_len).enumerate().for_each(|(plane, dst)| {
            let filter = &k[(plane % c) * kh * kw..][..kh * kw];
            let src = &src[plane * in_len..(plane + 1) * in_len];
            for a in 0..kh {
                for b in 0..kw {
                    let weight = filter[a * kw + b];
                    let x_offset = (b * d) as isize - pad_left as isize;
                    let (first, end) = valid_columns(x_offset, s, w, ow);
                    for i in 0..oh {
                        let y = (i * s + a * d) as isize - pad_top as isize;
                        if y < 0 || y >= h as isize || first == end {
                            continue;
                        }
                        let image_row = y as usize * w;
                        let start = (first as isize * s as isize + x_offset) as usize;
                        match self.transposed_to {
                            // Iterators rather than indexing: no bounds checks, and the
                            // stride-1 case vectorises.
                            None => {
                                let out_row = &mut dst[i * ow + first..i * ow + end];
                                let input = src[image_row + start..].iter().step_by(s);
                                for (o, v) in out_row.iter_mut().zip(input) {
                                    *o += weight * v;
                                }
                            }
                            Some(_) => {
                                let grads = &src[i * ow + first..i * ow + end];
                                let input = dst[image_row + start..].iter_mut().step_by(s);
                                for (x, g) in input.zip(grads) {
                                    *x += weight * g;
                                }
                            }
                        }
                    }
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from(self.output_dims((n, c)))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use super::cuda::{f32_view, launch, size};
        let (n, c, sh, sw) = l1.shape().dims4()?;
        let (kc, _, kh, kw) = l2.shape().dims4()?;
        if kc != c {
            candle_core::bail!("depthwise kernel has {kc} channels, input {c}");
        }
        let Sliding {
            stride,
            dilation,
            pad_top,
            pad_left,
            out_hw: (oh, ow),
            ..
        } = self.sliding;
        let (h, w, kernel) = match self.transposed_to {
            None => (sh, sw, "depthwise_forward"),
            Some((h, w)) if (sh, sw) == (oh, ow) => (h, w, "depthwise_transposed"),
            Some(_) => candle_core::bail!("depthwise transpose: gradient {sh}x{sw}, expected {oh}x{ow}"),
        };
        let shape = cuda_kernels::DepthwiseShape {
            c: size(c)?,
            h: size(h)?,
            w: size(w)?,
            oh: size(oh)?,
            ow: size(ow)?,
            kh: size(kh)?,
            kw: size(kw)?,
            stride: size(stride)?,
            dilation: size(dilation)?,
            pad_top: size(pad_top)?,
            pad_left: size(pad_left)?,
        };
        let (src, filters) = (
            f32_view(s1, l1, "depthwise-conv2d")?,
            f32_view(s2, l2, "depthwise-conv2d")?,
        );
        let dims = Shape::from(self.output_dims((n, c)));
        launch(&s1.device, kernel, dims, &[&src, &filters], &shape)
    }
}
