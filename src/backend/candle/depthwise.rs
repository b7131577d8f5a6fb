//! Depthwise convolution (groups == channels, one filter per channel) and its input-VJP, on
//! CPU and (with the `cuda` feature) CUDA. candle's grouped `conv2d`, like a per-group gemm,
//! runs one tiny product per channel — hundreds for MobileNetV2's layers; these direct loops
//! make one parallel pass over the planes, with the zero padding applied on the fly instead of
//! by a padded copy. The CUDA kernels (kernels.cu) add the taps in the CPU loops' order.

use super::elementwise::f32_data;
use super::fresh::built_in_chunks;
use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};

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

/// An image plane [h, w] seen as `stride` phase planes of `ceil(w / stride)` columns: phase r
/// holds columns r, r + stride, r + 2 * stride, ... A window sliding with that stride then
/// reads one phase contiguously.
struct Phases {
    stride: usize,
    h: usize,
    w: usize,
}

impl Phases {
    fn width(&self) -> usize {
        self.w.div_ceil(self.stride)
    }

    /// Where column `first * stride + x_offset` of row `y` sits: `x_offset = q * stride + r`
    /// puts it in phase r at column `first + q`.
    fn at(&self, y: usize, x_offset: isize, first: usize) -> usize {
        let s = self.stride as isize;
        let (q, r) = (x_offset.div_euclid(s), x_offset.rem_euclid(s) as usize);
        (r * self.h + y) * self.width() + (first as isize + q) as usize
    }

    /// `image`'s phases, in `scratch` (the image itself with stride 1).
    fn split<'a>(&self, image: &'a [f32], scratch: &'a mut Vec<f32>) -> &'a [f32] {
        if self.stride == 1 {
            return image;
        }
        let pw = self.width();
        scratch.clear();
        scratch.resize(self.stride * self.h * pw, 0.0);
        for (y, row) in image.chunks(self.w).enumerate() {
            for r in 0..self.stride {
                let phase = &mut scratch[(r * self.h + y) * pw..][..pw];
                for (p, &v) in phase.iter_mut().zip(row.iter().skip(r).step_by(self.stride)) {
                    *p = v;
                }
            }
        }
        scratch
    }

    /// Zeroed phases to gather into, in `scratch`.
    fn zeroed<'a>(&self, scratch: &'a mut Vec<f32>) -> &'a mut [f32] {
        scratch.clear();
        scratch.resize(self.stride * self.h * self.width(), 0.0);
        scratch
    }

    /// The phases back into one image plane.
    fn merge(&self, phases: &[f32], image: &mut [f32]) {
        let pw = self.width();
        for (y, row) in image.chunks_mut(self.w).enumerate() {
            for r in 0..self.stride {
                let phase = &phases[(r * self.h + y) * pw..][..pw];
                for (v, &p) in row.iter_mut().skip(r).step_by(self.stride).zip(phase) {
                    *v = p;
                }
            }
        }
    }
}

/// A stride-1 pass over one plane as a correlation of a zero-padded copy laid out `width`
/// columns wide: each tap is then one pass over the whole plane at a fixed offset, a loop long
/// enough to vectorise even where the rows are 7 or 14 wide (MobileNetV2's late layers, where a
/// pass per tap and output row ran mostly scalar in the browser). The kernel's reach in columns
/// (2 for a 3x3) is computed past each output row and dropped. Adding a padding zero's product
/// where the row loops skip the tap leaves every sum bit for bit the same (for finite weights).
struct FlatPlane {
    /// The padded copy's size: the output's plus the kernel's reach, (kh - 1) * d by (kw - 1) * d.
    rows: usize,
    width: usize,
    /// The output's size.
    out: (usize, usize),
}

impl FlatPlane {
    fn new(out: (usize, usize), reach: (usize, usize)) -> Self {
        FlatPlane {
            rows: out.0 + reach.0,
            width: out.1 + reach.1,
            out,
        }
    }

    /// Where a tap's first read sits in the padded copy, `rows` and `columns` below and right
    /// of its top-left corner.
    fn offset(&self, (rows, columns): (usize, usize)) -> usize {
        rows * self.width + columns
    }

    /// `dst` (the output, [out.0, out.1]) from `source` ([h, w], placed at row and column `at`
    /// of the padded copy, clipped to it) through `taps`: (offset, weight) pairs, summed in the
    /// order given.
    ///
    /// The sums are taken [`CHUNK`] outputs at a time over every tap, in registers, and stored
    /// once: a pass per tap over the whole plane loaded and stored every sum once per tap, which
    /// left the loop waiting on the L1 cache (the 112x112 planes do not fit in it).
    fn correlate(
        &self,
        source: &[f32],
        (h, w): (usize, usize),
        at: (usize, usize),
        taps: &[(usize, f32)],
        scratch: &mut Vec<f32>,
        dst: &mut [f32],
    ) {
        let (oh, ow) = self.out;
        let sums_len = (oh * self.width).next_multiple_of(CHUNK);
        scratch.clear();
        // The padded copy, plus the zeros read past it by the last row's dropped columns (the
        // kernel's reach) and the last chunk's (up to CHUNK); then the sums, one row of `width`
        // per output row, rounded up to whole chunks.
        let padded_len = self.rows * self.width + (self.width - ow) + CHUNK;
        scratch.resize(padded_len + sums_len, 0.0);
        let (padded, sums) = scratch.split_at_mut(padded_len);
        let columns = w.min(self.width.saturating_sub(at.1));
        if columns > 0 {
            for (row, padded_row) in source.chunks(w).take(h).zip(padded.chunks_mut(self.width).skip(at.0)) {
                padded_row[at.1..][..columns].copy_from_slice(&row[..columns]);
            }
        }
        for (start, chunk) in (0..).step_by(CHUNK).zip(sums.chunks_exact_mut(CHUNK)) {
            let mut acc = [0f32; CHUNK];
            for &(offset, weight) in taps {
                let values: &[f32; CHUNK] = padded[offset + start..][..CHUNK].try_into().expect("a whole chunk");
                for (sum, v) in acc.iter_mut().zip(values) {
                    *sum += weight * v;
                }
            }
            chunk.copy_from_slice(&acc);
        }
        for (out_row, row_sums) in dst.chunks_mut(ow).zip(sums.chunks(self.width)) {
            out_row.copy_from_slice(&row_sums[..ow]);
        }
    }
}

/// Outputs [`FlatPlane::correlate`] sums at once: 4 f32x4 (or one AVX-512) registers.
const CHUNK: usize = 16;

/// The sizes one depthwise pass works on, checked once for the CPU and the CUDA kernels.
struct Planes {
    n: usize,
    c: usize,
    /// The input image: the forward reads it, the transpose writes it.
    image: (usize, usize),
    kernel: (usize, usize),
}

impl Depthwise {
    /// The sizes of the input `l1` ([N, C, H, W], or the gradient [N, C, Ho, Wo] of the
    /// transpose) and the filters `l2` ([C, 1, kh, kw]), refused where they do not fit.
    fn planes(&self, l1: &Layout, l2: &Layout) -> candle_core::Result<Planes> {
        let (n, c, sh, sw) = l1.shape().dims4()?;
        let (kc, _, kh, kw) = l2.shape().dims4()?;
        if kc != c {
            candle_core::bail!("depthwise kernel has {kc} channels, input {c}");
        }
        let image = match self.transposed_to {
            None => (sh, sw),
            Some(image) if (sh, sw) == self.sliding.out_hw => image,
            Some(_) => {
                let (oh, ow) = self.sliding.out_hw;
                candle_core::bail!("depthwise transpose: gradient {sh}x{sw}, expected {oh}x{ow}")
            }
        };
        Ok(Planes {
            n,
            c,
            image,
            kernel: (kh, kw),
        })
    }

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
        let Planes {
            n,
            c,
            image: (h, w),
            kernel: (kh, kw),
        } = self.planes(l1, l2)?;
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
        // The forward reads the image and writes [Ho, Wo]; the transpose reads [Ho, Wo].
        let (in_len, out_len) = match self.transposed_to {
            None => (h * w, oh * ow),
            Some(_) => (oh * ow, h * w),
        };
        // The image's columns as `s` phase planes (column k*s + r at [r][.., k]), so that a
        // strided window reads (or the transpose writes) contiguous runs that vectorise; with
        // stride 1 the image itself is the one phase.
        let phases = Phases { stride: s, h, w };
        // Per kernel column b: its offset into the image row and the outputs it reaches.
        let columns: Vec<(isize, usize, usize)> = (0..kw)
            .map(|b| {
                let x_offset = (b * d) as isize - pad_left as isize;
                let (first, end) = valid_columns(x_offset, s, w, ow);
                (x_offset, first, end)
            })
            .collect();
        // With stride 1, both directions are one correlation of a padded plane (`FlatPlane`):
        // the forward's window reads the image at the padding's offset; the transpose's reads
        // the gradient, placed so that tap (a, b) reaches back (kh - 1 - a) * d rows and
        // (kw - 1 - b) * d columns (it needs no more padding than the kernel's reach).
        let reach = ((kh - 1) * d, (kw - 1) * d);
        let flat = match self.transposed_to {
            _ if s != 1 => None,
            None => Some((FlatPlane::new((oh, ow), reach), (h, w), (pad_top, pad_left))),
            Some(_) => reach
                .0
                .checked_sub(pad_top)
                .zip(reach.1.checked_sub(pad_left))
                .map(|at| (FlatPlane::new((h, w), reach), (oh, ow), at)),
        };
        // Each tap's offset in the padded plane, in (a, b) order: the order the other loops
        // and the CUDA kernel add the taps in.
        let offsets: Vec<usize> = match &flat {
            None => Vec::new(),
            Some((plane, ..)) => (0..kh)
                .flat_map(|a| (0..kw).map(move |b| (a, b)))
                .map(|(a, b)| match self.transposed_to {
                    None => plane.offset((a * d, b * d)),
                    Some(_) => plane.offset(((kh - 1 - a) * d, (kw - 1 - b) * d)),
                })
                .collect(),
        };
        // Per thread: the scratch planes, and one plane's taps as (offset, weight) pairs.
        let scratch_and_taps = <(Vec<f32>, Vec<(usize, f32)>)>::default;
        let out = built_in_chunks(
            n * c * out_len,
            out_len,
            scratch_and_taps,
            |(scratch, taps), plane, dst| {
                let filter = &k[(plane % c) * kh * kw..][..kh * kw];
                let src = &src[plane * in_len..(plane + 1) * in_len];
                if let Some((flat, source_hw, at)) = &flat {
                    taps.clear();
                    taps.extend(offsets.iter().copied().zip(filter.iter().copied()));
                    return flat.correlate(src, *source_hw, *at, taps, scratch, dst);
                }
                // Where tap (a, b) of output (i, first..end) sits in the phase planes.
                let taps = |i: usize, a: usize, b: usize| -> Option<(usize, usize, usize)> {
                    let y = (i * s + a * d) as isize - pad_top as isize;
                    let (x_offset, first, end) = columns[b];
                    if y < 0 || y >= h as isize || first == end {
                        return None;
                    }
                    let at = phases.at(y as usize, x_offset, first);
                    Some((first, end, at))
                };
                match self.transposed_to {
                    None => {
                        let image = phases.split(src, scratch);
                        // Output row by row, its taps in (a, b) order: each output adds its
                        // taps in the same order as the CUDA kernel.
                        for i in 0..oh {
                            let out_row = &mut dst[i * ow..(i + 1) * ow];
                            for a in 0..kh {
                                for b in 0..kw {
                                    let Some((first, end, at)) = taps(i, a, b) else {
                                        continue;
                                    };
                                    let weight = filter[a * kw + b];
                                    let input = &image[at..at + (end - first)];
                                    for (o, v) in out_row[first..end].iter_mut().zip(input) {
                                        *o += weight * v;
                                    }
                                }
                            }
                        }
                    }
                    Some(_) => {
                        // Input row by row: tap row a reaches row y from output row i =
                        // (y + pad_top - a * d) / s when that divides, so each input pixel
                        // gathers its taps in (a, b) order, as the CUDA kernel adds them.
                        let gather = |gathered: &mut [f32]| {
                            for y in 0..h {
                                for a in 0..kh {
                                    let reach = (y + pad_top) as isize - (a * d) as isize;
                                    if reach < 0 || !(reach as usize).is_multiple_of(s) || reach as usize / s >= oh {
                                        continue;
                                    }
                                    let i = reach as usize / s;
                                    for b in 0..kw {
                                        let Some((first, end, at)) = taps(i, a, b) else {
                                            continue;
                                        };
                                        let weight = filter[a * kw + b];
                                        let grads = &src[i * ow + first..i * ow + end];
                                        for (x, g) in gathered[at..at + (end - first)].iter_mut().zip(grads) {
                                            *x += weight * g;
                                        }
                                    }
                                }
                            }
                        };
                        if s == 1 {
                            gather(dst);
                        } else {
                            let gathered = phases.zeroed(scratch);
                            gather(gathered);
                            phases.merge(gathered, dst);
                        }
                    }
                }
            },
        );
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
        let Planes {
            n,
            c,
            image: (h, w),
            kernel: (kh, kw),
        } = self.planes(l1, l2)?;
        let Sliding {
            stride,
            dilation,
            pad_top,
            pad_left,
            out_hw: (oh, ow),
            ..
        } = self.sliding;
        let kernel = match self.transposed_to {
            None => "depthwise_forward",
            Some(_) => "depthwise_transposed",
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
