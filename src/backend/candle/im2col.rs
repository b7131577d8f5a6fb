//! Convolution on CPU as im2col + gemm, one image at a time through one reused column
//! buffer. candle 0.11's CPU `conv2d` transposes the whole batch to NHWC on one thread and
//! gathers patches element by element; materialising the columns of a whole batch instead
//! spends most of its time faulting in fresh pages. Here padding is applied while gathering
//! (no padded copy), and the gemm writes straight into the output.

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
use gemm::{gemm, Parallelism};
use rayon::prelude::*;

use super::elementwise::f32_data;

use crate::error::Result;

/// The output columns j (of `ow`) whose input column j*s + offset lies in [0, w): the rest
/// read zero padding. Returns (first, end) with first <= end.
pub(super) fn valid_columns(offset: isize, s: usize, w: usize, ow: usize) -> (usize, usize) {
    let first = if offset >= 0 {
        0
    } else {
        ((-offset) as usize).div_ceil(s)
    };
    let end = if (w as isize) > offset {
        ((w as isize - offset) as usize).div_ceil(s).min(ow)
    } else {
        0
    };
    (first, end.max(first))
}

/// How the kernel slides: stride, dilation, groups and zero padding (top, left); the
/// output size fixes how far the window goes (bottom and right padding follow from it).
#[derive(Debug, Clone, Copy)]
pub struct Sliding {
    pub stride: usize,
    pub dilation: usize,
    pub groups: usize,
    pub pad_top: usize,
    pub pad_left: usize,
    pub out_hw: (usize, usize),
}

/// Correlates `x` [N, C, H, W] with `kernel` [C_out, C/groups, kh, kw].
pub fn im2col_correlate(x: &Tensor, kernel: &Tensor, sliding: Sliding) -> Result<Tensor> {
    let x = x.contiguous()?;
    let kernel = kernel.contiguous()?;
    Ok(x.apply_op2_no_bwd(&kernel, &sliding)?)
}

impl Sliding {
    /// 1x1 kernel, stride 1, no padding: output pixels are input pixels.
    fn is_pointwise(&self, kernel: (usize, usize), input_hw: (usize, usize)) -> bool {
        kernel == (1, 1) && self.stride == 1 && self.pad_top == 0 && self.pad_left == 0 && self.out_hw == input_hw
    }

    /// Fills `columns` [C_g*kh*kw, Ho*Wo] with the patches of channels `channels` of `image`.
    fn gather(
        &self,
        image: &[f32],
        (h, w): (usize, usize),
        channels: std::ops::Range<usize>,
        (kh, kw): (usize, usize),
        columns: &mut [f32],
    ) {
        let (oh, ow) = self.out_hw;
        let pixels = oh * ow;
        let (s, d) = (self.stride, self.dilation);
        columns.par_chunks_mut(pixels).enumerate().for_each(|(row, dst)| {
            let c = channels.start + row / (kh * kw);
            let (a, b) = ((row / kw) % kh, row % kw);
            let plane = &image[c * h * w..(c + 1) * h * w];
            let x_offset = (b * d) as isize - self.pad_left as isize;
            let (first, end) = valid_columns(x_offset, s, w, ow);
            for (i, out) in dst.chunks_mut(ow).enumerate() {
                let y = (i * s + a * d) as isize - self.pad_top as isize;
                if y < 0 || y >= h as isize || first >= end {
                    out.fill(0.0);
                    continue;
                }
                let src = &plane[y as usize * w..(y as usize + 1) * w];
                out[..first].fill(0.0);
                out[end..].fill(0.0);
                let start = (first as isize * s as isize + x_offset) as usize;
                if s == 1 {
                    out[first..end].copy_from_slice(&src[start..start + (end - first)]);
                } else {
                    for (k, v) in out[first..end].iter_mut().enumerate() {
                        *v = src[start + k * s];
                    }
                }
            }
        });
    }
}

impl CustomOp2 for Sliding {
    fn name(&self) -> &'static str {
        "im2col-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = l1.shape().dims4()?;
        let (c_out, c_per_group, kh, kw) = l2.shape().dims4()?;
        let (x, k) = (f32_data(s1, l1, "im2col-conv2d")?, f32_data(s2, l2, "im2col-conv2d")?);
        let g = self.groups;
        if c != c_per_group * g || c_out % g != 0 {
            candle_core::bail!("im2col-conv2d: {c} input channels, kernel {:?}, {g} groups", l2.shape());
        }
        let (oh, ow) = self.out_hw;
        let pixels = oh * ow;
        let rows = c_per_group * kh * kw;
        let out_per_group = c_out / g;
        let mut out = vec![0f32; n * c_out * pixels];
        // A 1x1, stride-1, unpadded convolution's columns are its input planes themselves.
        let pointwise = self.is_pointwise((kh, kw), (h, w));
        let mut buffer = if pointwise {
            Vec::new()
        } else {
            vec![0f32; rows * pixels]
        };
        let threads = rayon::current_num_threads();
        for image in 0..n {
            let src = &x[image * c * h * w..(image + 1) * c * h * w];
            for group in 0..g {
                let channels = group * c_per_group..(group + 1) * c_per_group;
                let columns: &[f32] = if pointwise {
                    &src[channels.start * pixels..channels.end * pixels]
                } else {
                    self.gather(src, (h, w), channels, (kh, kw), &mut buffer);
                    &buffer
                };
                let dst = &mut out[(image * c_out + group * out_per_group) * pixels..][..out_per_group * pixels];
                let lhs = &k[group * out_per_group * rows..][..out_per_group * rows];
                // SAFETY: dst is [out_per_group, pixels], lhs [out_per_group, rows] and the
                // columns [rows, pixels], all row-major and in bounds as sliced above.
                unsafe {
                    gemm(
                        out_per_group,
                        pixels,
                        rows,
                        dst.as_mut_ptr(),
                        1,
                        pixels as isize,
                        false,
                        lhs.as_ptr(),
                        1,
                        rows as isize,
                        columns.as_ptr(),
                        1,
                        pixels as isize,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        Parallelism::Rayon(threads),
                    );
                }
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((n, c_out, oh, ow))))
    }
}

/// The transpose of `im2col_correlate` (a convolution's input-VJP): `grad` [N, C_out, Ho, Wo]
/// and the forward `kernel` [C_out, C/groups, kh, kw] give [N, C, H, W]. Per image the
/// columns are kernel^T @ grad, scattered back onto the input plane (col2im); a stride-2
/// layer does no work for the zeros a transposed convolution would insert.
pub fn col2im_transpose(grad: &Tensor, kernel: &Tensor, sliding: Sliding, input_hw: (usize, usize)) -> Result<Tensor> {
    let grad = grad.contiguous()?;
    let kernel = kernel.contiguous()?;
    Ok(grad.apply_op2_no_bwd(&kernel, &Transposed { sliding, input_hw })?)
}

struct Transposed {
    sliding: Sliding,
    input_hw: (usize, usize),
}

impl Transposed {
    /// Adds `columns` [C_g*kh*kw, Ho*Wo] onto the channels `channels` of `image` [C, H, W].
    fn scatter(&self, columns: &[f32], (kh, kw): (usize, usize), channels: std::ops::Range<usize>, image: &mut [f32]) {
        let Sliding {
            stride: s,
            dilation: d,
            pad_top,
            pad_left,
            out_hw: (oh, ow),
            ..
        } = self.sliding;
        let (h, w) = self.input_hw;
        let pixels = oh * ow;
        let planes = &mut image[channels.start * h * w..channels.end * h * w];
        planes.par_chunks_mut(h * w).enumerate().for_each(|(c, plane)| {
            for a in 0..kh {
                for b in 0..kw {
                    let row = &columns[((c * kh + a) * kw + b) * pixels..][..pixels];
                    let x_offset = (b * d) as isize - pad_left as isize;
                    let (first, end) = valid_columns(x_offset, s, w, ow);
                    if first >= end {
                        continue;
                    }
                    for (i, src) in row.chunks(ow).enumerate() {
                        let y = (i * s + a * d) as isize - pad_top as isize;
                        if y < 0 || y >= h as isize {
                            continue;
                        }
                        let dst = &mut plane[y as usize * w..(y as usize + 1) * w];
                        let start = (first as isize * s as isize + x_offset) as usize;
                        for (k, v) in src[first..end].iter().enumerate() {
                            dst[start + k * s] += v;
                        }
                    }
                }
            }
        });
    }
}

impl CustomOp2 for Transposed {
    fn name(&self) -> &'static str {
        "col2im-conv-transpose2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, c_out, oh, ow) = l1.shape().dims4()?;
        let (kc_out, c_per_group, kh, kw) = l2.shape().dims4()?;
        let (grad, k) = (f32_data(s1, l1, "col2im")?, f32_data(s2, l2, "col2im")?);
        let g = self.sliding.groups;
        if kc_out != c_out || c_out % g != 0 || (oh, ow) != self.sliding.out_hw {
            candle_core::bail!("col2im: gradient {:?} does not fit kernel {:?}", l1.shape(), l2.shape());
        }
        let (h, w) = self.input_hw;
        let c = c_per_group * g;
        let pixels = oh * ow;
        let rows = c_per_group * kh * kw;
        let out_per_group = c_out / g;
        let mut out = vec![0f32; n * c * h * w];
        let threads = rayon::current_num_threads();
        // Pointwise: the columns are the input planes themselves, so gemm writes them in place.
        let pointwise = self.sliding.is_pointwise((kh, kw), (h, w));
        let mut buffer = if pointwise {
            Vec::new()
        } else {
            vec![0f32; rows * pixels]
        };
        for image in 0..n {
            let image_out = &mut out[image * c * h * w..(image + 1) * c * h * w];
            for group in 0..g {
                let dy = &grad[(image * c_out + group * out_per_group) * pixels..][..out_per_group * pixels];
                let kernel = &k[group * out_per_group * rows..][..out_per_group * rows];
                let channels = group * c_per_group..(group + 1) * c_per_group;
                let columns = match pointwise {
                    true => &mut image_out[channels.start * pixels..channels.end * pixels],
                    false => buffer.as_mut_slice(),
                };
                // SAFETY: columns is [rows, pixels]; kernel^T is [rows, out_per_group] read
                // through swapped strides of the row-major [out_per_group, rows] kernel; dy is
                // [out_per_group, pixels]; all in bounds as sliced above.
                unsafe {
                    gemm(
                        rows,
                        pixels,
                        out_per_group,
                        columns.as_mut_ptr(),
                        1,
                        pixels as isize,
                        false,
                        kernel.as_ptr(),
                        rows as isize,
                        1,
                        dy.as_ptr(),
                        1,
                        pixels as isize,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        Parallelism::Rayon(threads),
                    );
                }
                if !pointwise {
                    self.scatter(&buffer, (kh, kw), channels, image_out);
                }
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((n, c, h, w))))
    }
}
