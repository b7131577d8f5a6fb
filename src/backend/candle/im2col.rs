//! Convolution on CPU as im2col + gemm, a few images at a time through one reused column
//! buffer ([`images_per_gemm`]). candle 0.11's CPU `conv2d` transposes the whole batch to NHWC
//! on one thread and gathers patches element by element; materialising the columns of a whole
//! batch instead spends most of its time faulting in fresh pages. Here padding is applied while
//! gathering (no padded copy), and for one image at a time the gemm writes straight into the
//! output. On CPUs with AVX-512 the columns of kernels larger than 1x1 are not written out at
//! all: our own product gathers them into its panels as it goes (`patches.rs`,
//! `avx512_product.rs`), for the forward and for the stride-1 input-VJP, which there runs as a
//! forward correlation instead of a product and a scatter.

use std::mem::MaybeUninit;

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::elementwise::f32_data;
use super::fresh::{written_whole, zeroed};
use super::patches::Patches;

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

/// How many images share one GEMM. Per image, a late layer's product is thin (ResNet-18's last
/// convolutions: 49 output pixels against 512 filters of 4608 taps) and the GEMM spends its time
/// packing the filters, again for every image; batched rows (Integrated Gradients' steps,
/// SmoothGrad's samples, a metric's perturbations) side by side make it wide. Images are added
/// until the product has `WIDE_GEMM_COLUMNS` columns, or its column buffer `MAX_COLUMN_BYTES`.
fn images_per_gemm(images: usize, rows: usize, pixels: usize) -> usize {
    const WIDE_GEMM_COLUMNS: usize = 3136; // 56x56: ResNet's second stage, where one image is wide
    const MAX_COLUMN_BYTES: usize = 32 << 20;
    let by_width = WIDE_GEMM_COLUMNS.div_ceil(pixels.max(1));
    let by_memory = MAX_COLUMN_BYTES / (rows * pixels * std::mem::size_of::<f32>()).max(1);
    by_width.min(by_memory).clamp(1, images.max(1))
}

/// One GEMM's columns: `images` images side by side, [rows, images, pixels] row-major, so the
/// product's column j is pixel j % pixels of image j / pixels.
#[derive(Debug, Clone, Copy)]
pub(super) struct ColumnBlock {
    pub images: usize,
    pub pixels: usize,
}

impl ColumnBlock {
    /// The chunk index of (row, image) in `par_chunks(pixels)`, and back.
    fn chunk(&self, row: usize, image: usize) -> usize {
        row * self.images + image
    }

    fn row_and_image(&self, chunk: usize) -> (usize, usize) {
        (chunk / self.images, chunk % self.images)
    }

    fn width(&self) -> usize {
        self.images * self.pixels
    }
}

impl Sliding {
    /// Whether this convolution's input-VJP runs as the forward correlation of the gradient
    /// with the flipped kernel, on the AVX-512 product: stride 1 with a kernel larger than 1x1
    /// (whose window reaches at least as far as the padding), on an AVX-512 CPU.
    fn correlates_back(&self, (kh, kw): (usize, usize)) -> bool {
        #[cfg(target_arch = "x86_64")]
        return self.stride == 1
            && (kh, kw) != (1, 1)
            && self.pad_top <= (kh - 1) * self.dilation
            && self.pad_left <= (kw - 1) * self.dilation
            && super::avx512_product::available();
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (kh, kw);
            false
        }
    }

    /// 1x1 kernel, stride 1, no padding: output pixels are input pixels.
    fn is_pointwise(&self, kernel: (usize, usize), input_hw: (usize, usize)) -> bool {
        kernel == (1, 1) && self.stride == 1 && self.pad_top == 0 && self.pad_left == 0 && self.out_hw == input_hw
    }

    /// Fills `columns` [C_g*kh*kw, images, Ho*Wo] with the patches of channels `channels` of
    /// `images` (consecutive [C, H, W] images).
    pub(super) fn gather(
        &self,
        images: &[f32],
        (c, h, w): (usize, usize, usize),
        channels: std::ops::Range<usize>,
        (kh, kw): (usize, usize),
        block: ColumnBlock,
        columns: &mut [f32],
    ) {
        let (oh, ow) = self.out_hw;
        let (s, d) = (self.stride, self.dilation);
        columns.par_chunks_mut(oh * ow).enumerate().for_each(|(chunk, dst)| {
            let (row, image) = block.row_and_image(chunk);
            let channel = channels.start + row / (kh * kw);
            let (a, b) = ((row / kw) % kh, row % kw);
            let plane = &images[(image * c + channel) * h * w..][..h * w];
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

/// The most multiply-adds one output element sums on its own before the sum joins the
/// element's total. The gemm crate sums a product's whole reduction, or runs of at least 512
/// (its `kc`), in one chain, and a float32 chain's rounding error grows with its length: over
/// VGG-11-BN's convolutions ours erred 1.4-2x as much as PyTorch's (oneDNN's), which decides
/// more max-pool windows whose values differ by a few ulps, and ReLU inputs within rounding
/// of 0, against float64. Runs of 128 err as little as oneDNN does
/// (`tests/engine/conv_accuracy.rs`), for 3-5 % of a ResNet-18 or VGG-11-BN gradient's time;
/// the runs' sums add up in order.
const REDUCTION_RUN: usize = 128;

/// The length of the runs a reduction of `k` taps is cut into: equal runs of at most
/// [`REDUCTION_RUN`], so 576 taps are 5 runs of 116, not 4 of 128 and one of 64.
fn run_length(k: usize) -> usize {
    k.div_ceil(k.div_ceil(REDUCTION_RUN).max(1)).max(1)
}

/// dst [m, n] = lhs [m, k] @ rhs [k, n], each given as (pointer, row stride, column stride),
/// the reduction in runs of at most [`REDUCTION_RUN`].
///
/// # Safety
/// Every element the shapes and strides address must lie in its buffer, and `dst` must not
/// overlap the inputs.
unsafe fn product(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    (lhs, lhs_rs, lhs_cs): (*const f32, isize, isize),
    (rhs, rhs_rs): (*const f32, isize),
) {
    let run = run_length(k);
    #[cfg(all(target_arch = "wasm32", target_feature = "relaxed-simd"))]
    super::simd128_product::product((m, n, k), dst, (lhs, lhs_rs, lhs_cs), (rhs, rhs_rs), run);
    #[cfg(not(all(target_arch = "wasm32", target_feature = "relaxed-simd")))]
    gemm_in_runs((m, n, k), dst, (lhs, lhs_rs, lhs_cs), (rhs, rhs_rs), run);
}

/// dst [m, n] = lhs [m, k] @ the columns of `patches` [k, n]: gathered into the AVX-512
/// product's panels as it goes where that runs, else written out into `columns` first.
///
/// # Safety
/// As for [`product`], with `patches` as the right-hand side.
unsafe fn product_of_patches(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    lhs: (*const f32, isize, isize),
    patches: &Patches,
    columns: &mut Vec<f32>,
) {
    // A 1x1 kernel's columns are no larger than its input: nothing to save.
    #[cfg(target_arch = "x86_64")]
    if patches.kernel != (1, 1) && super::avx512_product::available() {
        use super::avx512_product::{Lhs, Stride};
        let panels = super::patches::PatchPanels::new(patches, false);
        let lhs = Lhs {
            start: lhs.0,
            row_stride: lhs.1,
            taps: &Stride(lhs.2),
        };
        return super::avx512_product::product((m, n, k), dst, lhs, &panels, run_length(k));
    }
    columns.resize(k * n, 0.0);
    patches.gather(columns);
    product((m, n, k), dst, lhs, (columns.as_ptr(), n as isize));
}

/// [`product`] through the gemm crate, one call per run.
///
/// # Safety
/// As for [`product`].
#[cfg(not(all(target_arch = "wasm32", target_feature = "relaxed-simd")))]
pub(super) unsafe fn gemm_in_runs(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    (lhs, lhs_rs, lhs_cs): (*const f32, isize, isize),
    (rhs, rhs_rs): (*const f32, isize),
    run: usize,
) {
    use gemm::{gemm, Parallelism};
    // k = 0 still makes one (empty) product, which writes the zeros.
    for start in (0..k.max(1)).step_by(run) {
        let len = run.min(k - start.min(k));
        let offset = start as isize;
        gemm(
            m,
            n,
            len,
            dst,
            1,
            n as isize,
            start > 0,
            lhs.wrapping_offset(offset * lhs_cs),
            lhs_cs,
            lhs_rs,
            rhs.wrapping_offset(offset * rhs_rs),
            1,
            rhs_rs,
            if start > 0 { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            Parallelism::Rayon(rayon::current_num_threads()),
        );
    }
}

/// Runs `product` into the planes `channels` of `images` ([images, C, pixels], `layout`'s
/// images): one image's product lands in its planes, several images' in `products`, copied
/// out after. `product` gets the destination [channels, layout width] and must write it whole.
fn product_into_planes(
    layout: ColumnBlock,
    (c, channels, images): (usize, std::ops::Range<usize>, &mut [MaybeUninit<f32>]),
    products: &mut Vec<f32>,
    product: impl FnOnce(*mut f32),
) {
    if layout.images == 1 {
        product(
            images[channels.start * layout.pixels..channels.end * layout.pixels]
                .as_mut_ptr()
                .cast(),
        );
    } else {
        products.resize(channels.len() * layout.width(), 0.0);
        product(products.as_mut_ptr());
        from_block(products, layout, c, channels, images);
    }
}

/// Copies channels `channels` of `images` ([images, C, pixels]) into `block`
/// ([channels, images, pixels]).
fn to_block(images: &[f32], c: usize, channels: std::ops::Range<usize>, layout: ColumnBlock, block: &mut [f32]) {
    block
        .par_chunks_mut(layout.pixels)
        .enumerate()
        .for_each(|(chunk, dst)| {
            let (row, image) = layout.row_and_image(chunk);
            dst.copy_from_slice(&images[(image * c + channels.start + row) * layout.pixels..][..layout.pixels]);
        });
}

/// The inverse of [`to_block`]: writes `block` into channels `channels` of `images`.
fn from_block(
    block: &[f32],
    layout: ColumnBlock,
    c: usize,
    channels: std::ops::Range<usize>,
    images: &mut [MaybeUninit<f32>],
) {
    images
        .par_chunks_mut(layout.pixels)
        .enumerate()
        .for_each(|(plane, dst)| {
            let (image, channel) = (plane / c, plane % c);
            if channels.contains(&channel) {
                let chunk = layout.chunk(channel - channels.start, image);
                dst.write_copy_of_slice(&block[chunk * layout.pixels..][..layout.pixels]);
            }
        });
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
        let chunk = images_per_gemm(n, c_per_group * kh * kw, oh * ow);
        let out = self.correlate(x, (n, c, h, w), k, (c_out, kh, kw), chunk);
        Ok((CpuStorage::F32(out), Shape::from((n, c_out, oh, ow))))
    }
}

impl Sliding {
    /// The forward convolution, `chunk` images per GEMM.
    fn correlate(
        &self,
        x: &[f32],
        (n, c, h, w): (usize, usize, usize, usize),
        k: &[f32],
        (c_out, kh, kw): (usize, usize, usize),
        chunk: usize,
    ) -> Vec<f32> {
        let g = self.groups;
        let (c_per_group, out_per_group) = (c / g, c_out / g);
        let pixels = self.out_hw.0 * self.out_hw.1;
        let rows = c_per_group * kh * kw;
        let pointwise = self.is_pointwise((kh, kw), (h, w));
        let (mut columns, mut products) = (Vec::new(), Vec::new());
        let write = |out: &mut [MaybeUninit<f32>]| {
            for first in (0..n).step_by(chunk) {
                let layout = ColumnBlock {
                    images: chunk.min(n - first),
                    pixels,
                };
                let images_in = &x[first * c * h * w..][..layout.images * c * h * w];
                let images_out = &mut out[first * c_out * pixels..][..layout.images * c_out * pixels];
                for group in 0..g {
                    let channels = group * c_per_group..(group + 1) * c_per_group;
                    let filters = group * out_per_group..(group + 1) * out_per_group;
                    let lhs = (k[filters.start * rows..].as_ptr(), rows as isize, 1);
                    let shape = (out_per_group, layout.width(), rows);
                    let patches = Patches {
                        sliding: *self,
                        images: images_in,
                        image_dims: (c, h, w),
                        channels,
                        kernel: (kh, kw),
                        block: layout,
                    };
                    let out = (c_out, filters, &mut *images_out);
                    product_into_planes(layout, out, &mut products, |dst| {
                        // SAFETY: dst is [out_per_group, width], the filters [out_per_group,
                        // rows] row-major, the columns [rows, width]: all in bounds.
                        unsafe {
                            if pointwise && layout.images == 1 {
                                // One pointwise image's columns are its input planes themselves.
                                let planes = &images_in[patches.channels.start * pixels..];
                                product(shape, dst, lhs, (planes.as_ptr(), pixels as isize));
                            } else {
                                product_of_patches(shape, dst, lhs, &patches, &mut columns);
                            }
                        }
                    });
                }
            }
        };
        // SAFETY: every block of images writes, group by group, every filter's plane: the
        // product's first run (which does not read its destination) or `from_block`.
        unsafe { written_whole(n * c_out * pixels, write) }
    }
}

/// The transpose of `im2col_correlate` (a convolution's input-VJP): `grad` [N, C_out, Ho, Wo]
/// and the forward `kernel` [C_out, C/groups, kh, kw] give [N, C, H, W]. Per block of images
/// the columns are kernel^T @ grad, scattered back onto the input planes (col2im); a stride-2
/// layer does no work for the zeros a transposed convolution would insert. Stride-1 layers on
/// AVX-512 CPUs correlate the gradient with the flipped kernel instead
/// ([`Transposed::correlate_back`]).
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
    /// Writes the sums of `columns` [C_g*kh*kw, images, Ho*Wo] into the channels `channels` of
    /// `images` ([images, C, H, W]), each plane zeroed first.
    fn scatter(
        &self,
        columns: &[f32],
        layout: ColumnBlock,
        (kh, kw): (usize, usize),
        (c, channels): (usize, std::ops::Range<usize>),
        images: &mut [MaybeUninit<f32>],
    ) {
        let s = self.sliding.stride;
        let (h, w) = self.input_hw;
        let pixels = layout.pixels;
        images
            .par_chunks_mut(h * w)
            .enumerate()
            .for_each_init(Vec::new, |phases, (index, plane)| {
                let (image, channel) = (index / c, index % c);
                if !channels.contains(&channel) {
                    return;
                }
                let channel = channel - channels.start;
                let tap_rows = |a: usize, b: usize| {
                    let chunk = layout.chunk((channel * kh + a) * kw + b, image);
                    &columns[chunk * pixels..][..pixels]
                };
                if s == 1 {
                    // One phase: the plane itself.
                    self.add_taps_into_phases(tap_rows, (kh, kw), zeroed(plane));
                    return;
                }
                let (phase_h, phase_w) = (h.div_ceil(s), w.div_ceil(s));
                let phase_len = phase_h * phase_w;
                phases.clear();
                phases.resize(s * s * phase_len, 0.0);
                self.add_taps_into_phases(tap_rows, (kh, kw), phases);
                for (y, out_row) in plane.chunks_exact_mut(w).enumerate() {
                    let (row_phase, phase_y) = (y % s, y / s);
                    for column_phase in 0..s {
                        let phase = (row_phase * s + column_phase) * phase_len;
                        let phase_row = &phases[phase + phase_y * phase_w..][..phase_w];
                        for (out, &value) in out_row[column_phase..].iter_mut().step_by(s).zip(phase_row) {
                            out.write(value);
                        }
                    }
                }
            });
    }

    /// Adds each tap's rows into the plane's s x s phase planes (input rows y = r, r + s, ...,
    /// columns x = q, q + s, ..., each ceil(H / s) x ceil(W / s)), where a tap's outputs are
    /// contiguous: with stride s they land s columns apart in the plane, which no vector loop
    /// adds. `scatter` interleaves the phases into the plane after (with stride 1 the one phase
    /// is the plane). ResNet-18's first convolution (7x7, stride 2): its scatter took 1.6 ms an
    /// image, added element by element at the stride, 0.55 ms so.
    fn add_taps_into_phases<'c>(
        &self,
        tap_rows: impl Fn(usize, usize) -> &'c [f32],
        (kh, kw): (usize, usize),
        phases: &mut [f32],
    ) {
        let Sliding {
            stride: s,
            dilation: d,
            pad_top,
            pad_left,
            out_hw: (_, ow),
            ..
        } = self.sliding;
        let (h, w) = self.input_hw;
        let (phase_h, phase_w) = (h.div_ceil(s), w.div_ceil(s));
        let phase_len = phase_h * phase_w;
        for a in 0..kh {
            for b in 0..kw {
                let x_offset = (b * d) as isize - pad_left as isize;
                let (first, end) = valid_columns(x_offset, s, w, ow);
                if first >= end {
                    continue;
                }
                // Output column j lands at x = x_first + (j - first) * s: phase column
                // x_first / s + (j - first), in column phase x_first % s.
                let x_first = (first as isize * s as isize + x_offset) as usize;
                let (column_phase, phase_x) = (x_first % s, x_first / s);
                for (i, src) in tap_rows(a, b).chunks(ow).enumerate() {
                    let y = (i * s + a * d) as isize - pad_top as isize;
                    if y < 0 || y >= h as isize {
                        continue;
                    }
                    let (row_phase, phase_y) = (y as usize % s, y as usize / s);
                    let phase = &mut phases[(row_phase * s + column_phase) * phase_len..][..phase_len];
                    let dst = &mut phase[phase_y * phase_w + phase_x..][..end - first];
                    for (out, v) in dst.iter_mut().zip(&src[first..end]) {
                        *out += v;
                    }
                }
            }
        }
    }

    /// The input-VJP of a block of images as a correlation: input channel i at (y, x) sums
    /// gradient (f, y + pad_top - a·d, x + pad_left - b·d) times weight (f, i, a, b): the
    /// gradient padded by the window's reach less the padding, correlated with the kernel
    /// turned by 180 degrees, input and output channels swapped. Its columns are gathered
    /// straight into the AVX-512 product's panels and the filters read in place, so neither
    /// the column matrix (nine times the input for a 3x3 kernel) nor the scatter back onto the
    /// planes (col2im) is made.
    #[cfg(target_arch = "x86_64")]
    #[allow(clippy::too_many_arguments)]
    fn correlate_back(
        &self,
        grads: &[f32],
        (c_out, filters): (usize, std::ops::Range<usize>),
        k: &[f32],
        (c, channels, kh, kw): (usize, std::ops::Range<usize>, usize, usize),
        layout: ColumnBlock,
        images_out: &mut [MaybeUninit<f32>],
        products: &mut Vec<f32>,
    ) {
        use super::avx512_product::{product, Lhs};
        use super::patches::PatchPanels;
        let Sliding {
            dilation: d,
            pad_top,
            pad_left,
            out_hw,
            ..
        } = self.sliding;
        let patches = Patches {
            sliding: Sliding {
                stride: 1,
                dilation: d,
                groups: 1,
                pad_top: (kh - 1) * d - pad_top,
                pad_left: (kw - 1) * d - pad_left,
                out_hw: self.input_hw,
            },
            images: grads,
            image_dims: (c_out, out_hw.0, out_hw.1),
            channels: filters.clone(),
            kernel: (kh, kw),
            block: layout,
        };
        // Input channel i's weight for tap (f, a, b) of the flipped kernel lies at
        // i·kh·kw + f·rows + a·kw + b of the group's filters: an offset per tap, read in place.
        let rows = channels.len() * kh * kw;
        let taps: Vec<isize> = (0..filters.len() * kh * kw)
            .map(|tap| ((tap / (kh * kw)) * rows + tap % (kh * kw)) as isize)
            .collect();
        let lhs = Lhs {
            start: k[filters.start * rows..].as_ptr(),
            row_stride: (kh * kw) as isize,
            taps: taps.as_slice(),
        };
        let shape = (channels.len(), layout.width(), taps.len());
        let panels = PatchPanels::new(&patches, true);
        product_into_planes(layout, (c, channels, images_out), products, |dst| {
            // SAFETY: `correlates_back` checked the CPU; the taps address the group's filters,
            // the destination is [channels, width].
            unsafe { product(shape, dst, lhs, &panels, run_length(shape.2)) }
        });
    }

    /// The input-VJP, `chunk` images per GEMM: as a correlation (`correlated`, where
    /// `correlates_back` allows it) or as a product and a scatter.
    fn transpose(
        &self,
        grad: &[f32],
        (n, c_out): (usize, usize),
        k: &[f32],
        (c, kh, kw): (usize, usize, usize),
        chunk: usize,
        correlated: bool,
    ) -> Vec<f32> {
        debug_assert!(
            !correlated || cfg!(target_arch = "x86_64"),
            "the correlation runs on x86-64 only"
        );
        let (h, w) = self.input_hw;
        let g = self.sliding.groups;
        let (c_per_group, out_per_group) = (c / g, c_out / g);
        let pixels = self.sliding.out_hw.0 * self.sliding.out_hw.1;
        let rows = c_per_group * kh * kw;
        let pointwise = self.sliding.is_pointwise((kh, kw), (h, w));
        let (mut columns, mut packed) = (Vec::new(), Vec::new());
        let write = |out: &mut [MaybeUninit<f32>]| {
            for first in (0..n).step_by(chunk) {
                let layout = ColumnBlock {
                    images: chunk.min(n - first),
                    pixels,
                };
                let grads = &grad[first * c_out * pixels..][..layout.images * c_out * pixels];
                let images_out = &mut out[first * c * h * w..][..layout.images * c * h * w];
                for group in 0..g {
                    let channels = group * c_per_group..(group + 1) * c_per_group;
                    let filters = group * out_per_group..(group + 1) * out_per_group;
                    #[cfg(target_arch = "x86_64")]
                    if correlated {
                        let input_layout = ColumnBlock {
                            images: layout.images,
                            pixels: h * w,
                        };
                        self.correlate_back(
                            grads,
                            (c_out, filters),
                            k,
                            (c, channels, kh, kw),
                            input_layout,
                            images_out,
                            &mut columns,
                        );
                        continue;
                    }
                    let dy: &[f32] = if layout.images == 1 {
                        &grads[filters.start * pixels..filters.end * pixels]
                    } else {
                        packed.resize(out_per_group * layout.width(), 0.0);
                        to_block(grads, c_out, filters.clone(), layout, &mut packed);
                        &packed
                    };
                    // kernel^T [rows, out_per_group], read through swapped strides.
                    let lhs = (k[filters.start * rows..].as_ptr(), 1, rows as isize);
                    let rhs = (dy.as_ptr(), layout.width() as isize);
                    if pointwise && layout.images == 1 {
                        // One pointwise image's columns are its input planes: the GEMM writes them.
                        let dst = &mut images_out[channels.start * pixels..channels.end * pixels];
                        // SAFETY: dst is [rows, pixels], kernel^T [rows, out_per_group] within the
                        // row-major [out_per_group, rows] filters, dy [out_per_group, pixels].
                        unsafe { product((rows, pixels, out_per_group), dst.as_mut_ptr().cast(), lhs, rhs) };
                        continue;
                    }
                    columns.resize(rows * layout.width(), 0.0);
                    // SAFETY: as above, for [rows, width] columns and an [out_per_group, width] dy.
                    unsafe { product((rows, layout.width(), out_per_group), columns.as_mut_ptr(), lhs, rhs) };
                    if pointwise {
                        from_block(&columns, layout, c, channels, images_out);
                    } else {
                        self.scatter(&columns, layout, (kh, kw), (c, channels), images_out);
                    }
                }
            }
        };
        // SAFETY: every block of images writes, group by group, every input channel's plane: the
        // product's first run (which does not read its destination), `from_block` or `scatter`.
        unsafe { written_whole(n * c * h * w, write) }
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
        let chunk = images_per_gemm(n, c_per_group * kh * kw, oh * ow);
        let correlated = self.sliding.correlates_back((kh, kw));
        let out = self.transpose(grad, (n, c_out), k, (c, kh, kw), chunk, correlated);
        Ok((CpuStorage::F32(out), Shape::from((n, c, h, w))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;

    fn random(stream: &mut SplitMix64, len: usize) -> Vec<f32> {
        (0..len).map(|_| (stream.uniform() * 2.0 - 1.0) as f32).collect()
    }

    /// Equal within the rounding of sums taken in another order (the GEMM blocks its columns
    /// differently at another width).
    fn assert_close(what: &str, a: &[f32], b: &[f32]) {
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
        let gap = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(gap <= 1e-5 * scale, "{what}: differs by {gap} (scale {scale})");
    }

    /// The stride-1 input-VJP as a correlation errs no more than the product and scatter it
    /// replaces: against a float64 loop, each element's error as a fraction of its sum of
    /// |weight x gradient| (ResNet-18's layer3 shape with fewer input channels: 2304 taps).
    #[test]
    fn the_correlated_input_vjp_is_as_accurate_as_the_scatter() {
        if !sliding_for_3x3(1).correlates_back((3, 3)) {
            eprintln!("no AVX-512 on this CPU: the input-VJP is the product and scatter");
            return;
        }
        let (c, c_out, h, w) = (32, 256, 14, 14);
        let transposed = Transposed {
            sliding: sliding_for_3x3(14),
            input_hw: (h, w),
        };
        let mut stream = SplitMix64::new(8);
        let k = random(&mut stream, c_out * c * 9);
        let grad = random(&mut stream, c_out * h * w);
        let errors = |ours: &[f32]| -> (f64, f64) {
            let (mut sum, mut worst) = (0.0, 0f64);
            for i in 0..c {
                for y in 0..h {
                    for x in 0..w {
                        let (mut exact, mut magnitude) = (0f64, 0f64);
                        for f in 0..c_out {
                            for (a, b) in (0..3).flat_map(|a| (0..3).map(move |b| (a, b))) {
                                let (gy, gx) = ((y + 1) as isize - a as isize, (x + 1) as isize - b as isize);
                                if gy < 0 || gx < 0 || gy >= h as isize || gx >= w as isize {
                                    continue;
                                }
                                let term = k[((f * c + i) * 3 + a) * 3 + b] as f64
                                    * grad[(f * h + gy as usize) * w + gx as usize] as f64;
                                exact += term;
                                magnitude += term.abs();
                            }
                        }
                        let error = (ours[(i * h + y) * w + x] as f64 - exact).abs() / magnitude;
                        sum += error;
                        worst = worst.max(error);
                    }
                }
            }
            (sum / (c * h * w) as f64, worst)
        };
        let args = (&grad[..], (1, c_out), &k[..], (c, 3, 3), 1);
        let (correlated, scattered) = (
            errors(&transposed.transpose(args.0, args.1, args.2, args.3, args.4, true)),
            errors(&transposed.transpose(args.0, args.1, args.2, args.3, args.4, false)),
        );
        eprintln!("mean, worst error: correlated {correlated:?}, scattered {scattered:?}");
        assert!(
            correlated.0 <= 1.1 * scattered.0 && correlated.1 <= 1.5 * scattered.1,
            "the correlation errs {correlated:?} (mean, worst), the scatter {scattered:?}"
        );
    }

    /// A 3x3 window, stride 1, padding 1, over `size` x `size`.
    fn sliding_for_3x3(size: usize) -> Sliding {
        Sliding {
            stride: 1,
            dilation: 1,
            groups: 1,
            pad_top: 1,
            pad_left: 1,
            out_hw: (size, size),
        }
    }

    /// Five images one per GEMM, two per GEMM (a remainder of one) and all five in one: the
    /// composed-op tests check one of these against candle's own convolution.
    #[test]
    fn images_side_by_side_in_one_gemm_give_the_per_image_results() {
        let mut stream = SplitMix64::new(21);
        for case in 0..40 {
            let groups = [1, 2][case % 2];
            let pointwise = case % 4 == 0;
            let (kh, kw) = if pointwise {
                (1, 1)
            } else {
                (stream.pick(1, 3), stream.pick(1, 3))
            };
            let (stride, dilation) = if pointwise {
                (1, 1)
            } else {
                (stream.pick(1, 2), stream.pick(1, 2))
            };
            let (pad_top, pad_left) = if pointwise {
                (0, 0)
            } else {
                (stream.pick(0, 2), stream.pick(0, 2))
            };
            let (c, c_out) = (groups * stream.pick(1, 3), groups * stream.pick(1, 3));
            let (h, w) = (
                dilation * (kh - 1) + stream.pick(1, 6),
                dilation * (kw - 1) + stream.pick(1, 6),
            );
            let out_hw = (
                (h + 2 * pad_top - dilation * (kh - 1) - 1) / stride + 1,
                (w + 2 * pad_left - dilation * (kw - 1) - 1) / stride + 1,
            );
            let sliding = Sliding {
                stride,
                dilation,
                groups,
                pad_top,
                pad_left,
                out_hw,
            };
            let n = 5;
            let x = random(&mut stream, n * c * h * w);
            let k = random(&mut stream, c_out * (c / groups) * kh * kw);
            let grad = random(&mut stream, n * c_out * out_hw.0 * out_hw.1);
            let transposed = Transposed {
                sliding,
                input_hw: (h, w),
            };
            let forward = |chunk| sliding.correlate(&x, (n, c, h, w), &k, (c_out, kh, kw), chunk);
            let correlated = sliding.correlates_back((kh, kw));
            let backward = |chunk| transposed.transpose(&grad, (n, c_out), &k, (c, kh, kw), chunk, correlated);
            let (forward_alone, backward_alone) = (forward(1), backward(1));
            for chunk in [2, 5] {
                let what = format!("case {case}: {sliding:?}, {c}->{c_out} on {h}x{w}, {chunk} per GEMM");
                assert_close(&what, &forward(chunk), &forward_alone);
                assert_close(&format!("{what}, transposed"), &backward(chunk), &backward_alone);
            }
        }
    }
}
