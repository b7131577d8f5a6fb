//! Dense matrix products (linear layers and their VJPs).

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
/// The block of C one workgroup computes, per side.
const TILE: usize = 64;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    m: u32,
    k: u32,
    n: u32,
    rhs_t: u32,
}

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
    let params = Params {
        m: u32_of(m, "rows")?,
        k: u32_of(k, "inner dimension")?,
        n: u32_of(n, "columns")?,
        rhs_t: rhs_transposed as u32,
    };
    let grid = [
        u32_of(n.div_ceil(TILE), "column tiles")?,
        u32_of(m.div_ceil(TILE), "row tiles")?,
        1,
    ];
    device.dispatch(&MATMUL, &params, &[a.buffer(), b.buffer()], out.buffer(), grid)?;
    Ok(out)
}
