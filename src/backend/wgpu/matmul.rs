//! Dense matrix products: linear layers and their VJPs, and batches of products of two
//! activations (attention).

use bytemuck::{Pod, Zeroable};

use super::{u32_of, Kernel, WgpuTensor};
use crate::backend::BackendStorage;
use crate::error::{Error, Result};

const MATMUL: Kernel = Kernel {
    name: "matmul",
    source: concat!(
        include_str!("kernels/tile_gemm.wgsl"),
        include_str!("kernels/matmul.wgsl")
    ),
    entry: "main",
    inputs: 2,
};
const MATMUL_FEW_ROWS: Kernel = Kernel {
    name: "matmul_few_rows",
    entry: "few_rows",
    ..MATMUL
};
/// The block of C one workgroup computes, per side.
const TILE: usize = 64;
/// Below this many rows a tile would be mostly padding: one invocation per element instead.
const FEW_ROWS: usize = TILE / 2;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    m: u32,
    k: u32,
    n: u32,
    rhs_t: u32,
    /// Row stride of A, and the column of A where this product's k range starts.
    lda: u32,
    a_col: u32,
    /// Row stride of C, and the column of C where this product's columns start.
    ldc: u32,
    c_col: u32,
    /// Whether to add to C (the partial sums of a split k range) rather than overwrite it.
    accumulate: u32,
    /// Elements between consecutive products of a batch in A, B and C.
    a_batch: u32,
    b_batch: u32,
    c_batch: u32,
}

/// A [M, K] x B, B being [K, N] or, when `rhs_transposed`, [N, K]. A weight too large for
/// one buffer comes split by rows (see [`WgpuTensor`]); each piece is one product: rows of
/// [N, K] give a block of C's columns, rows of [K, N] a k range whose partial product adds
/// into C. The left-hand side is an activation, bounded by pass splitting, so it is whole.
pub(super) fn matmul(a: &WgpuTensor, b: &WgpuTensor, rhs_transposed: bool) -> Result<WgpuTensor> {
    a.check_device(b)?;
    let (m, k, n) = match (a.dims(), b.dims()) {
        (&[m, k], &[n, k2]) if rhs_transposed && k == k2 => (m, k, n),
        (&[m, k], &[k2, n]) if !rhs_transposed && k == k2 => (m, k, n),
        (da, db) => {
            let t = if rhs_transposed { "^T" } else { "" };
            return Err(Error::Shape(format!("matmul of {da:?} and {db:?}{t}")));
        }
    };
    let device = a.device();
    let out = device.alloc(&[m, n])?;
    let (a_buffer, c_buffer) = (a.buffer()?, out.buffer()?);
    let row = if rhs_transposed { k } else { n }.max(1);
    let mut first_row = 0;
    for (i, piece) in b.pieces().iter().enumerate() {
        if piece.len % row != 0 {
            return Err(Error::Device(format!(
                "matmul with {:?}: a buffer piece of the right-hand side ends inside a row",
                b.dims()
            )));
        }
        let rows = piece.len / row;
        let (piece_k, piece_n, a_col, c_col) = if rhs_transposed {
            (k, rows, 0, first_row)
        } else {
            (rows, n, first_row, 0)
        };
        let params = Params {
            m: u32_of(m, "rows")?,
            k: u32_of(piece_k, "inner dimension")?,
            n: u32_of(piece_n, "columns")?,
            rhs_t: rhs_transposed as u32,
            lda: u32_of(k, "inner dimension")?,
            a_col: u32_of(a_col, "inner dimension")?,
            ldc: u32_of(n, "columns")?,
            c_col: u32_of(c_col, "columns")?,
            accumulate: (!rhs_transposed && i > 0) as u32,
            a_batch: 0,
            b_batch: 0,
            c_batch: 0,
        };
        let inputs = [a_buffer, &*piece.buffer];
        dispatch(&device, &params, &inputs, c_buffer, 1)?;
        first_row += rows;
    }
    Ok(out)
}

/// The tile kernel, or the few-rows one where a tile would be mostly padding, over `batch`
/// products.
fn dispatch(
    device: &super::WgpuDevice,
    params: &Params,
    inputs: &[&::wgpu::Buffer],
    out: &::wgpu::Buffer,
    batch: usize,
) -> Result<()> {
    let (m, n) = (params.m as usize, params.n as usize);
    let batch = u32_of(batch, "products in a batch")?;
    if m < FEW_ROWS {
        let [x, y, _] = device.linear_grid(m * n)?;
        device.dispatch(&MATMUL_FEW_ROWS, params, inputs, out, [x, y, batch])
    } else {
        let grid = [
            u32_of(n.div_ceil(TILE), "column tiles")?,
            u32_of(m.div_ceil(TILE), "row tiles")?,
            batch,
        ];
        device.dispatch(&MATMUL, params, inputs, out, grid)
    }
}

/// [B, M, K] x [B, K, N] (or [B, N, K]^T) -> [B, M, N]: one product per batch element, all in
/// one dispatch. Both sides are activations, each in one buffer.
pub(super) fn batched_matmul(a: &WgpuTensor, b: &WgpuTensor, rhs_transposed: bool) -> Result<WgpuTensor> {
    a.check_device(b)?;
    let (batch, m, k, n) = match (a.dims(), b.dims()) {
        (&[z, m, k], &[z2, n, k2]) if rhs_transposed && k == k2 && z == z2 => (z, m, k, n),
        (&[z, m, k], &[z2, k2, n]) if !rhs_transposed && k == k2 && z == z2 => (z, m, k, n),
        (da, db) => {
            let t = if rhs_transposed { "^T" } else { "" };
            return Err(Error::Shape(format!("batched matmul of {da:?} and {db:?}{t}")));
        }
    };
    let device = a.device();
    let out = device.alloc(&[batch, m, n])?;
    let params = Params {
        m: u32_of(m, "rows")?,
        k: u32_of(k, "inner dimension")?,
        n: u32_of(n, "columns")?,
        rhs_t: rhs_transposed as u32,
        lda: u32_of(k, "inner dimension")?,
        a_col: 0,
        ldc: u32_of(n, "columns")?,
        c_col: 0,
        accumulate: 0,
        a_batch: u32_of(m * k, "elements per product")?,
        b_batch: u32_of(k * n, "elements per product")?,
        c_batch: u32_of(m * n, "elements per product")?,
    };
    dispatch(&device, &params, &[a.buffer()?, b.buffer()?], out.buffer()?, batch)?;
    Ok(out)
}
