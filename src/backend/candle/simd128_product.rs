//! The convolutions' matrix product in the browser build with WebAssembly relaxed SIMD
//! (`scripts/build-relaxed-wasm.sh`), in place of the gemm crate's. The gemm crate's wasm kernel
//! multiplies, then adds: two instructions per four multiply-adds (it took 48 % of a
//! MobileNetV2 gradient's time in the page). Here each multiply-add is one fused
//! `f32x4.relaxed_madd`. With the stride-1 depthwise pass (depthwise.rs), the page's MobileNetV2
//! gradient went from 93 to 66 ms, and its results equal the native CLI's (AVX FMA) more
//! closely (BENCHMARKS.md). The
//! plain simd128 build keeps the gemm crate, which beat this kernel without the fused add.
//!
//! Blocking: the reduction in runs of `run` taps (the caller's precision bound, see
//! `im2col::REDUCTION_RUN`). One tile of [`ROWS`] x [`COLUMNS`] outputs sums its run in
//! registers, then joins the output (written by the first run, added to by the later ones, in
//! order). A and B are read in place (only a ragged last column panel is copied): packing A's
//! rows into panels first took 6 % of a gradient and gained nothing. 4 x 8 beat 6 x 8 and
//! 4 x 12, which run out of the 16 vector registers V8 gives a wasm function on x86-64.

use std::arch::wasm32::*;
use std::cell::RefCell;

/// Output rows per tile: one A value broadcast per row and tap.
const ROWS: usize = 4;
/// Output columns per tile: [`VECTORS`] f32x4 of B per tap.
const COLUMNS: usize = 8;
const VECTORS: usize = COLUMNS / 4;

/// a * b + c: fused on hardware with FMA (every x86-64 since 2013, every ARM64).
#[inline(always)]
fn multiply_add(a: v128, b: v128, c: v128) -> v128 {
    f32x4_relaxed_madd(a, b, c)
}

thread_local! {
    /// The ragged last column panel, kept between products (the page explains on one thread).
    static EDGE: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// dst [m, n] (row-major) = lhs [m, k] @ rhs [k, n], lhs given as (pointer, row stride, column
/// stride), rhs as (pointer, row stride) with contiguous columns; the reduction in runs of at
/// most `run`.
///
/// # Safety
/// Every element the shapes and strides address must lie in its buffer, and `dst` must not
/// overlap the inputs.
pub(super) unsafe fn product(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    (lhs, lhs_rs, lhs_cs): (*const f32, isize, isize),
    (rhs, rhs_rs): (*const f32, isize),
    run: usize,
) {
    if k == 0 {
        std::ptr::write_bytes(dst, 0, m * n);
        return;
    }
    EDGE.with_borrow_mut(|b_edge| {
        for start in (0..k).step_by(run) {
            let taps = run.min(k - start);
            let accumulate = start > 0;
            let a_run = lhs.offset(start as isize * lhs_cs);
            let b_run = rhs.offset(start as isize * rhs_rs);
            // Whole column panels are read in place, tap after tap a row stride apart (they
            // stay in the L1 cache while every row panel passes them); the last, partial one
            // is copied out, zero-padded.
            for column in (0..n).step_by(COLUMNS) {
                let columns = COLUMNS.min(n - column);
                let (b, b_stride) = if columns == COLUMNS {
                    (b_run.add(column), rhs_rs)
                } else {
                    pack_edge(b_edge, columns, taps, b_run.add(column), rhs_rs);
                    (b_edge.as_ptr(), COLUMNS as isize)
                };
                for row in (0..m).step_by(ROWS) {
                    let rows = ROWS.min(m - row);
                    // A is read in place too: four rows, `lhs_cs` apart from tap to tap (the
                    // filters' rows forward, four adjacent floats per tap in the transpose).
                    // Past the last row the last one is read again, and its sums dropped.
                    let a_rows = std::array::from_fn(|r| a_run.offset((row + r.min(rows - 1)) as isize * lhs_rs));
                    let tile = Tile {
                        dst: dst.add(row * n + column),
                        row_stride: n,
                        rows,
                        columns,
                    };
                    tile.store(sum_run(taps, (a_rows, lhs_cs), (b, b_stride)), accumulate);
                }
            }
        }
    });
}

/// Copies the run's last `columns` (< COLUMNS) columns of B (tap p's at `b + p * b_stride`) into
/// `panel` ([taps][COLUMNS]), zero-padded.
///
/// # Safety
/// `b` must address `columns` readable floats at each of the `taps` strides.
unsafe fn pack_edge(panel: &mut Vec<f32>, columns: usize, taps: usize, b: *const f32, b_stride: isize) {
    panel.clear();
    panel.resize(taps * COLUMNS, 0.0);
    for (p, packed) in panel.chunks_exact_mut(COLUMNS).enumerate() {
        packed[..columns].copy_from_slice(std::slice::from_raw_parts(b.offset(p as isize * b_stride), columns));
    }
}

/// One tile's sums over a run: row r of A's tap p at `a_rows[r] + p * a_stride`, the tile's
/// COLUMNS columns of B's tap p at `b + p * b_stride`.
///
/// # Safety
/// Each of `a_rows` must address `taps` floats through its stride, and `b` COLUMNS floats at
/// each of its strides.
#[inline(always)]
unsafe fn sum_run(
    taps: usize,
    (a_rows, a_stride): ([*const f32; ROWS], isize),
    (b, b_stride): (*const f32, isize),
) -> [[v128; VECTORS]; ROWS] {
    let mut sums = [[f32x4_splat(0.0); VECTORS]; ROWS];
    for p in 0..taps {
        let b_tap: [v128; VECTORS] =
            std::array::from_fn(|v| v128_load(b.offset(p as isize * b_stride).add(4 * v).cast()));
        for (r, row_sums) in sums.iter_mut().enumerate() {
            let a_value = v128_load32_splat(a_rows[r].offset(p as isize * a_stride).cast());
            for (sum, &b_vector) in row_sums.iter_mut().zip(&b_tap) {
                *sum = multiply_add(a_value, b_vector, *sum);
            }
        }
    }
    sums
}

/// Where one tile's sums land: `rows` x `columns` outputs (fewer than ROWS x COLUMNS at the
/// right and bottom edges).
struct Tile {
    dst: *mut f32,
    row_stride: usize,
    rows: usize,
    columns: usize,
}

impl Tile {
    /// Writes the sums into the output, or adds them to it.
    ///
    /// # Safety
    /// The tile's rows and columns must lie in the output.
    #[inline(always)]
    unsafe fn store(&self, sums: [[v128; VECTORS]; ROWS], accumulate: bool) {
        if self.columns == COLUMNS {
            for (r, row_sums) in sums.iter().enumerate().take(self.rows) {
                let out = self.dst.add(r * self.row_stride);
                for (v, &sum) in row_sums.iter().enumerate() {
                    let at = out.add(4 * v).cast::<v128>();
                    let value = if accumulate { f32x4_add(v128_load(at), sum) } else { sum };
                    v128_store(at, value);
                }
            }
        } else {
            for (r, row_sums) in sums.iter().enumerate().take(self.rows) {
                let mut values = [0f32; COLUMNS];
                for (v, &sum) in row_sums.iter().enumerate() {
                    v128_store(values.as_mut_ptr().add(4 * v).cast(), sum);
                }
                let out = std::slice::from_raw_parts_mut(self.dst.add(r * self.row_stride), self.columns);
                for (o, &value) in out.iter_mut().zip(&values) {
                    *o = if accumulate { *o + value } else { value };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use wasm_bindgen_test::wasm_bindgen_test;

    /// The shared cases (`product_check`) against a float64 product.
    #[wasm_bindgen_test]
    fn products_equal_a_float64_product() {
        for case in super::super::product_check::cases() {
            let mut dst = vec![f32::NAN; case.m * case.n];
            unsafe {
                super::product(
                    (case.m, case.n, case.k),
                    dst.as_mut_ptr(),
                    (case.a.as_ptr(), case.a_strides.0, case.a_strides.1),
                    (case.b.as_ptr(), case.b_stride as isize),
                    case.run,
                )
            };
            case.assert_equals_float64(&dst);
        }
    }
}
