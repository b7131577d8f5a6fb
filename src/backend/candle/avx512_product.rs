//! The convolutions' matrix product on x86-64 CPUs with AVX-512 (chosen at run time; other
//! CPUs and the other products keep the gemm crate), for kernels larger than 1x1: the forward,
//! and the stride-1 input-VJP as the forward correlation of the gradient with the flipped
//! kernel. Its right-hand side comes through [`Columns`], so a convolution's columns are
//! gathered from the input images straight into the kernel's panels (`patches::PatchPanels`),
//! never written out as a whole column matrix (nine times a 3x3 layer's input) and read back;
//! its left-hand side, the filters, is read in place through [`TapOffsets`], so the input-VJP
//! reads the transposed, flipped kernel without copying it. BENCHMARKS.md has the figures.
//!
//! Blocking, as in Goto's GEMM: the output is cut into blocks, one task each, as many as keep
//! every thread busy. A task takes the reduction run by run (the caller's precision bound,
//! `im2col::REDUCTION_RUN`): panel by panel, it packs [`COLUMNS`] columns of B, then each
//! tile of [`ROWS`] x COLUMNS outputs sums the run in 24 registers, reading A's rows in place,
//! and joins the output: written by the first run, added to by the later ones, in order. So
//! each output element is the sum, in order, of its runs' sums, each a chain of fused
//! multiply-adds tap after tap: what the gemm crate computes, bit for bit (the test below
//! holds them equal; on a run of only two taps the gemm crate rounds another way, 1 ulp
//! apart). A panel is packed just before its tiles use it, so it is still in the L1 cache:
//! packing the whole block's panels first (256 KB) made layers with 64 filters, which use a
//! panel only 11 times, 12 % slower.

use std::arch::x86_64::*;
use std::cell::RefCell;
use std::ops::Range;

use rayon::prelude::*;

/// Output rows per tile: one A value broadcast per row and tap.
const ROWS: usize = 6;
/// Vectors of 16 floats per tile row.
const VECTORS: usize = 4;
/// Output columns per tile.
pub(super) const COLUMNS: usize = 16 * VECTORS;
/// The most output rows one task owns: its block of the output (256 x 512 floats, 512 KB) and
/// A's rows stay in the 2 MB L2 cache while the run's panels pass.
const BLOCK_ROWS: usize = 256;
/// The most output columns one task owns, 8 panels: A's block is read again for each panel.
const BLOCK_COLUMNS: usize = 8 * COLUMNS;

/// Whether this CPU runs the kernel (AVX-512 Foundation); std caches the answer.
pub(super) fn available() -> bool {
    is_x86_feature_detected!("avx512f")
}

/// The product's right-hand side B [k, n], handed to the kernel run by run and block by block.
pub(super) trait Columns: Sync {
    /// Writes B's rows `taps` and columns `columns` into `panels`, panel after panel of
    /// [`COLUMNS`] columns, each [taps][COLUMNS]; lanes past the last column are zero.
    fn pack(&self, taps: Range<usize>, columns: Range<usize>, panels: &mut [f32]);
}

/// Where tap p of each of A's rows lies, in floats from the row's start.
pub(super) trait TapOffsets: Sync {
    fn offset(&self, tap: usize) -> isize;
}

/// Taps a fixed distance apart: a matrix's column stride.
pub(super) struct Stride(pub isize);

impl TapOffsets for Stride {
    #[inline(always)]
    fn offset(&self, tap: usize) -> isize {
        tap as isize * self.0
    }
}

/// Taps anywhere in the row, one offset each: the filters of a convolution's input-VJP, read as
/// the transposed, flipped kernel without copying it.
impl TapOffsets for [isize] {
    #[inline(always)]
    fn offset(&self, tap: usize) -> isize {
        self[tap]
    }
}

/// The left-hand side A [m, k]: row i starts at `start + i * row_stride`, its taps at `taps`.
pub(super) struct Lhs<'a, T: TapOffsets + ?Sized> {
    pub start: *const f32,
    pub row_stride: isize,
    pub taps: &'a T,
}

// SAFETY: A is only read, and outlives the product.
unsafe impl<T: TapOffsets + ?Sized> Send for Lhs<'_, T> {}
unsafe impl<T: TapOffsets + ?Sized> Sync for Lhs<'_, T> {}

impl<T: TapOffsets + ?Sized> Clone for Lhs<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T: TapOffsets + ?Sized> Copy for Lhs<'_, T> {}

/// The output's pointer, shared by the tasks, each writing its own block.
#[derive(Clone, Copy)]
struct Output(*mut f32);
// SAFETY: tasks write disjoint blocks of the output.
unsafe impl Send for Output {}
unsafe impl Sync for Output {}

/// dst [m, n] (row-major) = lhs [m, k] @ rhs [k, n], the reduction in runs of at most `run`.
///
/// # Safety
/// [`available`] must hold; every element the shapes and strides address must lie in its
/// buffer (and `rhs` must pack only such elements), and `dst` must not overlap the inputs.
pub(super) unsafe fn product<T: TapOffsets + ?Sized>(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    lhs: Lhs<T>,
    rhs: &impl Columns,
    run: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        std::ptr::write_bytes(dst, 0, m * n);
        return;
    }
    // Every thread gets a few tasks. Cutting the columns finer comes first (down to two panels
    // a task): each row block packs its columns of B again, and B may be gathered from images.
    // The panels (and tiles) are dealt out evenly: blocks rounded up to whole panels left the
    // last one short, and 7 tasks of ResNet-18's 56x56 layers (49 panels) kept one of two
    // threads idle an eighth of the time.
    let wanted_tasks = 4 * rayon::current_num_threads();
    let (panels, tiles) = (n.div_ceil(COLUMNS), m.div_ceil(ROWS));
    let column_blocks = panels
        .div_ceil(BLOCK_COLUMNS / COLUMNS)
        .max(wanted_tasks.min(panels.div_ceil(2)))
        .min(panels);
    let row_blocks = tiles
        .div_ceil(BLOCK_ROWS / ROWS)
        .max(wanted_tasks.div_ceil(column_blocks).min(tiles.div_ceil(4)))
        .min(tiles);
    let output = Output(dst);
    let task = |index: usize| {
        let (row_block, column_block) = (index / column_blocks, index % column_blocks);
        let share = |block: usize, blocks: usize, units: usize, unit: usize, len: usize| {
            (block * units / blocks * unit).min(len)..((block + 1) * units / blocks * unit).min(len)
        };
        let rows = share(row_block, row_blocks, tiles, ROWS, m);
        let columns = share(column_block, column_blocks, panels, COLUMNS, n);
        PANEL.with_borrow_mut(|panel| {
            // SAFETY: the caller's promises; the block lies in [m, n] and no other task writes it.
            unsafe { product_block((output, n), lhs, rhs, (rows, columns, k), run, panel) };
        });
    };
    let tasks = row_blocks * column_blocks;
    if tasks == 1 {
        task(0);
    } else {
        (0..tasks).into_par_iter().for_each(task);
    }
}

thread_local! {
    /// Each thread's packed panel of B, kept from product to product: a fresh one cost an
    /// allocation and a memset per task.
    static PANEL: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// One task: the output block `rows` x `columns`, through the whole reduction.
///
/// # Safety
/// As for [`product`], and no other thread touches the block.
unsafe fn product_block<T: TapOffsets + ?Sized>(
    (Output(dst), dst_stride): (Output, usize),
    lhs: Lhs<T>,
    rhs: &impl Columns,
    (rows, columns, k): (Range<usize>, Range<usize>, usize),
    run: usize,
    panel: &mut Vec<f32>,
) {
    let column_panels = columns.len().div_ceil(COLUMNS);
    for start in (0..k).step_by(run) {
        let taps = start..k.min(start + run);
        let height = taps.len();
        let b = cache_aligned(panel, height * COLUMNS);
        for panel_index in 0..column_panels {
            let first_column = columns.start + panel_index * COLUMNS;
            let width = COLUMNS.min(columns.end - first_column);
            rhs.pack(taps.clone(), first_column..first_column + width, b);
            for first_row in rows.clone().step_by(ROWS) {
                let tile_rows = ROWS.min(rows.end - first_row);
                // A is read in place, ROWS rows at once: packing it cost as much as the sums on
                // thin blocks. Past the last row the last one is read again, and its sums dropped.
                let a_rows: [*const f32; ROWS] = std::array::from_fn(|r| {
                    lhs.start
                        .offset((first_row + r.min(tile_rows - 1)) as isize * lhs.row_stride)
                });
                let tile = Tile {
                    dst: dst.add(first_row * dst_stride + first_column),
                    stride: dst_stride,
                    rows: tile_rows,
                    columns: width,
                };
                // A narrow last panel (ResNet-18's 7x7 layers: 49 columns an image) sums only
                // the vectors it fills.
                let a = (a_rows, lhs.taps);
                // SAFETY: `available` holds (the caller's promise); A's rows hold the run's taps,
                // B's panel `height` taps of COLUMNS values; the tile lies in the task's block.
                unsafe {
                    match width.div_ceil(16) {
                        1 => sum_tile::<T, 1>(taps.clone(), a, b.as_ptr(), &tile, start > 0),
                        2 => sum_tile::<T, 2>(taps.clone(), a, b.as_ptr(), &tile, start > 0),
                        3 => sum_tile::<T, 3>(taps.clone(), a, b.as_ptr(), &tile, start > 0),
                        _ => sum_tile::<T, VECTORS>(taps.clone(), a, b.as_ptr(), &tile, start > 0),
                    }
                }
            }
        }
    }
}

/// `len` floats of `buffer` starting on a 64-byte boundary, so that no vector load of a panel
/// straddles two cache lines.
fn cache_aligned(buffer: &mut Vec<f32>, len: usize) -> &mut [f32] {
    const LINE_FLOATS: usize = 16;
    buffer.resize(len + LINE_FLOATS, 0.0);
    let skip = buffer.as_ptr().align_offset(64).min(LINE_FLOATS);
    &mut buffer[skip..skip + len]
}

/// Where one tile's sums land: `rows` x `columns` outputs (fewer than ROWS x COLUMNS at the
/// block's bottom and right edges).
struct Tile {
    dst: *mut f32,
    stride: usize,
    rows: usize,
    columns: usize,
}

/// One tile's sums over the run `taps` (row r of A's tap p at `a_rows[r] + a_taps.offset(p)`,
/// B's panel [taps][COLUMNS], of which the first `USED` vectors of 16 columns), written into
/// the tile, or added to it when `accumulate`.
///
/// # Safety
/// AVX-512F must be present; A's rows must hold the run's taps and B's panel as many; the tile
/// must lie in the output.
#[target_feature(enable = "avx512f")]
unsafe fn sum_tile<T: TapOffsets + ?Sized, const USED: usize>(
    taps: Range<usize>,
    (a_rows, a_taps): ([*const f32; ROWS], &T),
    b: *const f32,
    tile: &Tile,
    accumulate: bool,
) {
    let mut sums = [[_mm512_setzero_ps(); USED]; ROWS];
    for (index, p) in taps.enumerate() {
        let b_tap = b.add(index * COLUMNS);
        let a_offset = a_taps.offset(p);
        let mut b_vectors = [_mm512_setzero_ps(); USED];
        for (v, vector) in b_vectors.iter_mut().enumerate() {
            *vector = _mm512_loadu_ps(b_tap.add(16 * v));
        }
        for (r, row_sums) in sums.iter_mut().enumerate() {
            let a_value = _mm512_set1_ps(*a_rows[r].offset(a_offset));
            for (sum, &b_vector) in row_sums.iter_mut().zip(&b_vectors) {
                *sum = _mm512_fmadd_ps(a_value, b_vector, *sum);
            }
        }
    }
    for (r, row_sums) in sums.iter().enumerate().take(tile.rows) {
        let out = tile.dst.add(r * tile.stride);
        for (v, &sum) in row_sums.iter().enumerate() {
            let lanes = tile.columns.saturating_sub(16 * v).min(16);
            if lanes == 0 {
                break;
            }
            let mask: __mmask16 = if lanes == 16 { !0 } else { (1 << lanes) - 1 };
            let at = out.add(16 * v);
            let value = if accumulate {
                _mm512_add_ps(_mm512_maskz_loadu_ps(mask, at), sum)
            } else {
                sum
            };
            _mm512_mask_storeu_ps(at, mask, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// B stored as a matrix: row p at `start + p * row_stride`, its columns contiguous.
    struct Matrix {
        start: *const f32,
        row_stride: usize,
    }

    // SAFETY: a Matrix only reads through its pointer, and the tests keep the buffer alive and
    // unchanged for the whole product.
    unsafe impl Sync for Matrix {}

    impl Columns for Matrix {
        fn pack(&self, taps: Range<usize>, columns: Range<usize>, panels: &mut [f32]) {
            let height = taps.len();
            for (index, panel) in panels.chunks_exact_mut(height * COLUMNS).enumerate() {
                let first = columns.start + index * COLUMNS;
                let width = COLUMNS.min(columns.end - first);
                for (p, lanes) in panel.chunks_exact_mut(COLUMNS).enumerate() {
                    // SAFETY: the tests' B [k, n] lies in its buffer.
                    let row = unsafe {
                        std::slice::from_raw_parts(self.start.add((taps.start + p) * self.row_stride + first), width)
                    };
                    lanes[..width].copy_from_slice(row);
                    lanes[width..].fill(0.0);
                }
            }
        }
    }

    /// The shared cases (`product_check`) against a float64 product, and against the gemm
    /// crate's, which sums the same runs in the same order, so it must agree bit for bit
    /// (except on runs of two taps).
    #[test]
    fn products_equal_a_float64_product_and_the_gemm_crates() {
        if !available() {
            eprintln!("no AVX-512 on this CPU: the gemm crate's product runs instead");
            return;
        }
        for case in super::super::product_check::cases() {
            let (m, n, k, run) = (case.m, case.n, case.k, case.run);
            let a = Lhs {
                start: case.a.as_ptr(),
                row_stride: case.a_strides.0,
                taps: &Stride(case.a_strides.1),
            };
            let mut ours = vec![f32::NAN; m * n];
            let mut gemm_crate = vec![f32::NAN; m * n];
            let rhs = Matrix {
                start: case.b.as_ptr(),
                row_stride: case.b_stride,
            };
            unsafe {
                product((m, n, k), ours.as_mut_ptr(), a, &rhs, run);
                let b = (case.b.as_ptr(), case.b_stride as isize);
                let a = (case.a.as_ptr(), case.a_strides.0, case.a_strides.1);
                super::super::im2col::gemm_in_runs((m, n, k), gemm_crate.as_mut_ptr(), a, b, run);
            }
            case.assert_equals_float64(&ours);
            if (0..k).step_by(run).any(|start| run.min(k - start) == 2) {
                // The gemm crate sums a run of two taps another way (34 of 40 outputs equal, the
                // rest 1 ulp apart): only the float64 check holds there.
                continue;
            }
            for (index, (got, theirs)) in ours.iter().zip(&gemm_crate).enumerate() {
                assert_eq!(
                    got.to_bits(),
                    theirs.to_bits(),
                    "m={m} n={n} k={k} run={run}: [{}, {}] = {got}, the gemm crate's {theirs}",
                    index / n,
                    index % n
                );
            }
        }
    }
}
