//! A convolution's columns (im2col). Where the AVX-512 product runs they are gathered from the
//! input images straight into its panels, run by run and panel by panel ([`PatchPanels`]);
//! elsewhere they are written out as a whole column matrix first. For a 3x3 layer that matrix
//! is nine times the input, written once and read back from beyond the caches.

use std::ops::Range;

use super::im2col::{ColumnBlock, Sliding};

/// The columns [C_g*kh*kw, images x Ho*Wo] of channels `channels` of `block.images`
/// consecutive [C, H, W] images.
pub(super) struct Patches<'a> {
    pub sliding: Sliding,
    pub images: &'a [f32],
    pub image_dims: (usize, usize, usize),
    pub channels: Range<usize>,
    pub kernel: (usize, usize),
    pub block: ColumnBlock,
}

impl Patches<'_> {
    /// Writes the whole column matrix, [C_g*kh*kw, images, Ho*Wo].
    pub fn gather(&self, columns: &mut [f32]) {
        let (c, h, w) = self.image_dims;
        self.sliding.gather(
            self.images,
            (c, h, w),
            self.channels.clone(),
            self.kernel,
            self.block,
            columns,
        );
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) use panels::PatchPanels;

#[cfg(target_arch = "x86_64")]
mod panels {
    use std::arch::x86_64::*;
    use std::mem::MaybeUninit;
    use std::ops::Range;

    use rayon::prelude::*;

    use super::super::avx512_product::{Columns, COLUMNS};
    use super::super::im2col::Sliding;
    use super::Patches;

    /// [`Patches`] as the AVX-512 product reads them, gathered panel by panel from a padded
    /// copy of the images split into s x s phase planes (phase (r, q): padded rows r, r + s,
    /// ..., columns q, q + s, ...; stride 1: the padded images themselves). There every tap of
    /// an output row reads one contiguous run at a fixed offset: no clipping at the borders
    /// and no strided loads, only vector copies of each run of a panel. (Gathering straight
    /// from the images, clipped piece by piece with `memcpy` and `fill`, took a quarter of a
    /// ResNet-18 gradient; and with stride s a tap's columns are s apart in the image.)
    pub(in super::super) struct PatchPanels {
        /// [image][channel][read phase][phase rows][phase columns].
        source: Vec<f32>,
        image_len: usize,
        phase_w: usize,
        /// Output pixels per image, and per output row.
        pixels: usize,
        out_w: usize,
        /// Each tap's offset into its image in `source`, from its column's own position
        /// (output row y, column x: y * phase_w + x).
        taps: Vec<usize>,
    }

    impl PatchPanels {
        /// The panels of `patches`; `flipped`: tap (channel, a, b) reads the window at
        /// (kh - 1 - a, kw - 1 - b), the kernel turned by 180 degrees (an input-VJP as the
        /// correlation of the gradient).
        pub fn new(patches: &Patches, flipped: bool) -> Self {
            let Sliding {
                stride: s,
                dilation: d,
                pad_top,
                pad_left,
                out_hw: (oh, ow),
                ..
            } = patches.sliding;
            let (c, h, w) = patches.image_dims;
            let (kh, kw) = patches.kernel;
            // The padded rows and columns the windows reach, split by phase.
            let (phase_h, phase_w) = (
                ((oh - 1) * s + (kh - 1) * d + 1).div_ceil(s),
                ((ow - 1) * s + (kw - 1) * d + 1).div_ceil(s),
            );
            let phase_len = phase_h * phase_w;
            // Only the phases some tap reads get a plane (a 3x3 window with stride 2 reads all
            // four; with stride 1 there is one).
            let mut slot_of_phase = vec![None; s * s];
            let mut phases = Vec::new();
            for a in 0..kh {
                for b in 0..kw {
                    let phase = (a * d % s) * s + b * d % s;
                    if slot_of_phase[phase].is_none() {
                        slot_of_phase[phase] = Some(phases.len());
                        phases.push(phase);
                    }
                }
            }
            let plane_len = phases.len() * phase_len;
            let channels = patches.channels.len();
            let len = patches.block.images * channels * plane_len;
            let mut source = Vec::with_capacity(len);
            source.spare_capacity_mut()[..len]
                .par_chunks_mut(plane_len)
                .enumerate()
                .for_each(|(index, planes)| {
                    let (image, channel) = (index / channels, patches.channels.start + index % channels);
                    let input = &patches.images[(image * c + channel) * h * w..][..h * w];
                    for (&phase, plane) in phases.iter().zip(planes.chunks_exact_mut(phase_len)) {
                        let (r, q) = (phase / s, phase % s);
                        // Phase column x holds input column x * s + q - pad_left.
                        let first = (pad_left.saturating_sub(q)).div_ceil(s).min(phase_w);
                        let end = (w + pad_left).saturating_sub(q).div_ceil(s).clamp(first, phase_w);
                        for (y, row) in plane.chunks_exact_mut(phase_w).enumerate() {
                            let input_y = (y * s + r) as isize - pad_top as isize;
                            if input_y < 0 || input_y >= h as isize {
                                row.fill(MaybeUninit::new(0.0));
                                continue;
                            }
                            let input_row = &input[input_y as usize * w..][..w];
                            row[..first].fill(MaybeUninit::new(0.0));
                            row[end..].fill(MaybeUninit::new(0.0));
                            let from = first * s + q - pad_left;
                            if s == 1 {
                                row[first..end].write_copy_of_slice(&input_row[from..from + (end - first)]);
                            } else {
                                for (slot, &value) in
                                    row[first..end].iter_mut().zip(input_row[from..].iter().step_by(s))
                                {
                                    slot.write(value);
                                }
                            }
                        }
                    }
                });
            // SAFETY: every plane's every row was written above.
            unsafe { source.set_len(len) };
            let taps = (0..channels * kh * kw)
                .map(|tap| {
                    let (channel, a, b) = (tap / (kh * kw), (tap / kw) % kh, tap % kw);
                    let (a, b) = if flipped { (kh - 1 - a, kw - 1 - b) } else { (a, b) };
                    let (y, x) = (a * d, b * d);
                    let slot = slot_of_phase[(y % s) * s + x % s].expect("every tap's phase has a plane");
                    channel * plane_len + slot * phase_len + (y / s) * phase_w + x / s
                })
                .collect();
            Self {
                source,
                image_len: channels * plane_len,
                phase_w,
                pixels: oh * ow,
                out_w: ow,
                taps,
            }
        }

        /// [`Columns::pack`] with AVX-512 moves: each aligned vector of a panel row is merged
        /// from the runs it covers by masked loads, then stored whole. (The x86-64 baseline's
        /// `memcpy` per run cost as much as the copy itself; copying run by run, the unaligned
        /// and masked stores took 40 % of the packing.)
        ///
        /// # Safety
        /// AVX-512F must be present; `taps` and `columns` must lie within the patches.
        #[target_feature(enable = "avx512f")]
        unsafe fn pack_avx512(&self, taps: Range<usize>, columns: Range<usize>, panels: &mut [f32]) {
            const LANES: usize = 16;
            let taps = &self.taps[taps];
            for (index, panel) in panels.chunks_exact_mut(taps.len() * COLUMNS).enumerate() {
                let first = columns.start + index * COLUMNS;
                let end = columns.end.min(first + COLUMNS);
                // Per vector of the panel row, the runs along one output row of one image it
                // covers: where lane 0 would read in `source` (before the tap's offset), and
                // the lanes the run fills.
                let mut pieces = [[(0isize, 0 as __mmask16); LANES]; COLUMNS / LANES];
                let mut counts = [0; COLUMNS / LANES];
                let mut column = first;
                while column < end {
                    let (image, pixel) = (column / self.pixels, column % self.pixels);
                    let (y, x) = (pixel / self.out_w, pixel % self.out_w);
                    let lane = column - first;
                    let vector = lane / LANES;
                    let len = (self.out_w - x).min(end - column).min(LANES * (vector + 1) - lane);
                    let start = image * self.image_len + y * self.phase_w + x;
                    let mask = (((1u32 << len) - 1) << (lane % LANES)) as __mmask16;
                    pieces[vector][counts[vector]] = (start as isize - (lane % LANES) as isize, mask);
                    counts[vector] += 1;
                    column += len;
                }
                let source = self.source.as_ptr();
                for (&tap, lanes) in taps.iter().zip(panel.chunks_exact_mut(COLUMNS)) {
                    for (vector, pieces) in pieces.iter().enumerate() {
                        let mut merged = _mm512_setzero_ps();
                        for &(start, mask) in &pieces[..counts[vector]] {
                            // SAFETY: the lanes under the mask read the run, inside `source`;
                            // masked-off lanes are not read.
                            merged = _mm512_mask_loadu_ps(merged, mask, source.offset(start + tap as isize));
                        }
                        _mm512_storeu_ps(lanes[LANES * vector..].as_mut_ptr(), merged);
                    }
                }
            }
        }
    }

    impl Columns for PatchPanels {
        fn pack(&self, taps: Range<usize>, columns: Range<usize>, panels: &mut [f32]) {
            // SAFETY: the product runs only where AVX-512 does (`avx512_product::available`),
            // and asks only for its own taps and columns.
            unsafe { self.pack_avx512(taps, columns, panels) }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::super::super::im2col::ColumnBlock;
        use super::*;
        use crate::backend::WindowGeometry;
        use crate::rng::SplitMix64;

        /// Every panel the product could ask for (a random run of taps, a random block of
        /// columns, ragged at both ends) holds what `Sliding::gather` writes there: strides 1 to
        /// 3 (phase planes), dilation, padding on either side, a group's channels out of more,
        /// several images side by side, rows up to 40 wide (panels of 64 columns span rows).
        /// Flipped, tap (channel, a, b) holds the gathered row of (channel, kh - 1 - a, kw - 1 - b).
        #[test]
        fn panels_hold_the_gathered_columns() {
            if !super::super::super::avx512_product::available() {
                eprintln!("no AVX-512 on this CPU: the panels are not used");
                return;
            }
            let mut stream = SplitMix64::new(5);
            for case in 0..120 {
                let flipped = case % 2 == 1;
                let (kh, kw) = (stream.pick(1, 4), stream.pick(1, 4));
                let (stride, dilation) = (stream.pick(1, 3), stream.pick(1, 2));
                let (pad_top, pad_left) = (stream.pick(0, 2), stream.pick(0, 2));
                let (h, w) = (
                    dilation * (kh - 1) + stream.pick(1, 9),
                    dilation * (kw - 1) + stream.pick(1, 40),
                );
                let c = stream.pick(1, 4);
                let channels = stream.pick(0, c - 1)..c;
                let geometry = WindowGeometry {
                    kernel: (kh, kw),
                    stride,
                    dilation,
                    padding: (pad_top, pad_top, pad_left, pad_left),
                    groups: 1,
                };
                let out_hw = geometry.output_hw((h, w)).expect("the window fits the padded image");
                let sliding = super::super::super::sliding(&geometry, out_hw);
                let block = ColumnBlock {
                    images: stream.pick(1, 3),
                    pixels: out_hw.0 * out_hw.1,
                };
                let images: Vec<f32> = (0..block.images * c * h * w).map(|i| i as f32 + 1.0).collect();
                let patches = Patches {
                    sliding,
                    images: &images,
                    image_dims: (c, h, w),
                    channels: channels.clone(),
                    kernel: (kh, kw),
                    block,
                };
                let (rows, width) = (channels.len() * kh * kw, block.images * block.pixels);
                let mut columns = vec![f32::NAN; rows * width];
                patches.gather(&mut columns);
                let panels = PatchPanels::new(&patches, flipped);
                let first_tap = stream.pick(0, rows - 1);
                let taps = first_tap..stream.pick(first_tap + 1, rows);
                let first_column = stream.pick(0, width - 1);
                let columns_range = first_column..stream.pick(first_column + 1, width);
                let mut packed = vec![f32::NAN; columns_range.len().div_ceil(COLUMNS) * taps.len() * COLUMNS];
                panels.pack(taps.clone(), columns_range.clone(), &mut packed);
                for (index, panel) in packed.chunks_exact(taps.len() * COLUMNS).enumerate() {
                    for (p, lanes) in panel.chunks_exact(COLUMNS).enumerate() {
                        let tap = taps.start + p;
                        let gathered_tap = if flipped {
                            let (channel, a, b) = (tap / (kh * kw), (tap / kw) % kh, tap % kw);
                            (channel * kh + kh - 1 - a) * kw + kw - 1 - b
                        } else {
                            tap
                        };
                        for (lane, &got) in lanes.iter().enumerate() {
                            let column = columns_range.start + index * COLUMNS + lane;
                            let want = if column < columns_range.end {
                                columns[gathered_tap * width + column]
                            } else {
                                0.0
                            };
                            assert_eq!(
                                got.to_bits(),
                                want.to_bits(),
                                "case {case}: {sliding:?}, kernel {kh}x{kw}, {h}x{w}, channels {channels:?} \
                                 of {c}, {block:?}, flipped {flipped}: tap {tap}, column {column} is {got}, \
                                 gathered {want}"
                            );
                        }
                    }
                }
            }
        }
    }
}
