//! A convolution's columns (im2col). Where the AVX-512 product runs they are gathered from the
//! input images straight into its panels, run by run and block by block ([`PatchPanels`]);
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
    use std::borrow::Cow;
    use std::ops::Range;

    use rayon::prelude::*;

    use super::super::avx512_product::{Columns, COLUMNS};
    use super::super::im2col::{valid_columns, Sliding};
    use super::Patches;

    /// [`Patches`] as the AVX-512 product reads them. With stride s > 1 a tap's columns are s
    /// apart in the image, which only a scalar loop gathers (the first 7x7 convolution of
    /// ResNet-18 spent longer gathering than multiplying); so the images are first split into
    /// s x s phase planes (rows r, r + s, ..., columns q, q + s, ...), where every tap reads a
    /// contiguous run. With stride 1 the images are read as they are.
    pub(in super::super) struct PatchPanels<'a> {
        patches: &'a Patches<'a>,
        /// [image][channel][s][s][phase rows][phase columns]; stride 1: the images themselves.
        source: Cow<'a, [f32]>,
        /// Phase rows and columns: (ceil(H / s), ceil(W / s)).
        phase_hw: (usize, usize),
        /// Floats per image in `source`.
        image_len: usize,
        /// The first of `patches.channels` in `source`: 0 when only those channels were split.
        first_channel: usize,
    }

    /// Where one tap (a row of the columns) reads: output (y, x) takes
    /// `plane + (y + row_shift) * phase columns + x + column_shift` of its image in the source,
    /// for y in `rows` and x in `columns`; it reads zero padding elsewhere.
    struct Tap {
        plane: usize,
        row_shift: isize,
        column_shift: isize,
        rows: (usize, usize),
        columns: (usize, usize),
    }

    impl<'a> PatchPanels<'a> {
        pub fn new(patches: &'a Patches<'a>) -> Self {
            let s = patches.sliding.stride;
            let (c, h, w) = patches.image_dims;
            if s == 1 {
                return Self {
                    patches,
                    source: Cow::Borrowed(patches.images),
                    phase_hw: (h, w),
                    image_len: c * h * w,
                    first_channel: patches.channels.start,
                };
            }
            let (phase_h, phase_w) = (h.div_ceil(s), w.div_ceil(s));
            let channels = patches.channels.len();
            let plane_len = s * s * phase_h * phase_w;
            // Only the phases some tap reads (a 1x1 kernel without padding reads one of four).
            let (kh, kw) = patches.kernel;
            let d = patches.sliding.dilation;
            let phase_of = |tap: usize, pad: usize| ((tap * d) as isize - pad as isize).rem_euclid(s as isize) as usize;
            let mut read = vec![false; s * s];
            for a in 0..kh {
                for b in 0..kw {
                    read[phase_of(a, patches.sliding.pad_top) * s + phase_of(b, patches.sliding.pad_left)] = true;
                }
            }
            let mut source = vec![0.0; patches.block.images * channels * plane_len];
            source
                .par_chunks_mut(plane_len)
                .enumerate()
                .for_each(|(index, phases)| {
                    let (image, channel) = (index / channels, patches.channels.start + index % channels);
                    let plane = &patches.images[(image * c + channel) * h * w..][..h * w];
                    for (phase, phase_plane) in phases.chunks_exact_mut(phase_h * phase_w).enumerate() {
                        let (row_phase, column_phase) = (phase / s, phase % s);
                        if !read[phase] {
                            continue;
                        }
                        let rows = plane.chunks_exact(w).skip(row_phase).step_by(s);
                        for (phase_row, row) in phase_plane.chunks_exact_mut(phase_w).zip(rows) {
                            for (out, &value) in phase_row.iter_mut().zip(row[column_phase..].iter().step_by(s)) {
                                *out = value;
                            }
                        }
                    }
                });
            Self {
                patches,
                source: Cow::Owned(source),
                phase_hw: (phase_h, phase_w),
                image_len: channels * plane_len,
                first_channel: 0,
            }
        }

        fn tap(&self, row: usize) -> Tap {
            let (kh, kw) = self.patches.kernel;
            let (_, h, w) = self.patches.image_dims;
            let Sliding {
                stride: s,
                dilation: d,
                pad_top,
                pad_left,
                out_hw: (oh, ow),
                ..
            } = self.patches.sliding;
            let (phase_h, phase_w) = self.phase_hw;
            let channel = self.first_channel + row / (kh * kw);
            let (a, b) = ((row / kw) % kh, row % kw);
            let y_offset = (a * d) as isize - pad_top as isize;
            let x_offset = (b * d) as isize - pad_left as isize;
            // Input row y = out_y * s + y_offset = (out_y + y_offset.div_euclid(s)) * s + phase.
            let (row_phase, column_phase) = (y_offset.rem_euclid(s as isize), x_offset.rem_euclid(s as isize));
            let phase = row_phase as usize * s + column_phase as usize;
            Tap {
                plane: (channel * s * s + phase) * phase_h * phase_w,
                row_shift: y_offset.div_euclid(s as isize),
                column_shift: x_offset.div_euclid(s as isize),
                rows: valid_columns(y_offset, s, h, oh),
                columns: valid_columns(x_offset, s, w, ow),
            }
        }
    }

    impl Columns for PatchPanels<'_> {
        fn pack(&self, taps: Range<usize>, columns: Range<usize>, panels: &mut [f32]) {
            let (_, ow) = self.patches.sliding.out_hw;
            let (pixels, phase_w) = (self.patches.block.pixels, self.phase_hw.1);
            let taps: Vec<Tap> = taps.map(|row| self.tap(row)).collect();
            for (index, panel) in panels.chunks_exact_mut(taps.len() * COLUMNS).enumerate() {
                let first = columns.start + index * COLUMNS;
                let end = columns.end.min(first + COLUMNS);
                if end - first < COLUMNS {
                    for lanes in panel.chunks_exact_mut(COLUMNS) {
                        lanes[end - first..].fill(0.0);
                    }
                }
                // The panel's columns in pieces along one output row of one image.
                let mut column = first;
                while column < end {
                    let (image, pixel) = (column / pixels, column % pixels);
                    let (out_y, out_x) = (pixel / ow, pixel % ow);
                    let len = (ow - out_x).min(end - column);
                    let image_data = &self.source[image * self.image_len..][..self.image_len];
                    let lane = column - first;
                    for (tap, lanes) in taps.iter().zip(panel.chunks_exact_mut(COLUMNS)) {
                        let dst = &mut lanes[lane..lane + len];
                        // The piece's output columns whose input column is inside the image.
                        let (inside_first, inside_end) = (tap.columns.0.max(out_x), tap.columns.1.min(out_x + len));
                        if out_y < tap.rows.0 || out_y >= tap.rows.1 || inside_first >= inside_end {
                            dst.fill(0.0);
                            continue;
                        }
                        let (lead, tail) = (inside_first - out_x, inside_end - out_x);
                        dst[..lead].fill(0.0);
                        dst[tail..].fill(0.0);
                        let source_row = (out_y as isize + tap.row_shift) as usize * phase_w;
                        let start = tap.plane + source_row + (inside_first as isize + tap.column_shift) as usize;
                        dst[lead..tail].copy_from_slice(&image_data[start..start + (tail - lead)]);
                    }
                    column += len;
                }
            }
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
        #[test]
        fn panels_hold_the_gathered_columns() {
            let mut stream = SplitMix64::new(5);
            for case in 0..60 {
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
                let panels = PatchPanels::new(&patches);
                let first_tap = stream.pick(0, rows - 1);
                let taps = first_tap..stream.pick(first_tap + 1, rows);
                let first_column = stream.pick(0, width - 1);
                let columns_range = first_column..stream.pick(first_column + 1, width);
                let mut packed = vec![f32::NAN; columns_range.len().div_ceil(COLUMNS) * taps.len() * COLUMNS];
                panels.pack(taps.clone(), columns_range.clone(), &mut packed);
                for (index, panel) in packed.chunks_exact(taps.len() * COLUMNS).enumerate() {
                    for (p, lanes) in panel.chunks_exact(COLUMNS).enumerate() {
                        for (lane, &got) in lanes.iter().enumerate() {
                            let column = columns_range.start + index * COLUMNS + lane;
                            let want = if column < columns_range.end {
                                columns[(taps.start + p) * width + column]
                            } else {
                                0.0
                            };
                            assert_eq!(
                                got.to_bits(),
                                want.to_bits(),
                                "case {case}: {sliding:?}, kernel {kh}x{kw}, {h}x{w}, channels {channels:?} \
                                 of {c}, {block:?}: tap {}, column {column} is {got}, gathered {want}",
                                taps.start + p
                            );
                        }
                    }
                }
            }
        }
    }
}
