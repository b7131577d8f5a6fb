//! Operations that move elements or normalise along one axis: permutation and the
//! LayerNorm/GroupNorm normalisation with its input-VJP.

use bytemuck::{Pod, Zeroable};

use super::{elem_count, u32_of, Kernel, WgpuTensor};
use crate::backend::BackendStorage;
use crate::error::{Error, Result};

const PERMUTE: Kernel = Kernel {
    name: "permute",
    source: include_str!("kernels/permute.wgsl"),
    entry: "main",
    inputs: 1,
};
const NORMALIZE: Kernel = Kernel {
    name: "normalize",
    source: include_str!("kernels/normalize.wgsl"),
    entry: "forward",
    inputs: 2,
};
const NORMALIZE_VJP: Kernel = Kernel {
    name: "normalize_vjp",
    source: include_str!("kernels/normalize.wgsl"),
    entry: "vjp",
    inputs: 2,
};

/// The largest rank `permute.wgsl` indexes.
const MAX_RANK: usize = 8;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct PermuteParams {
    len: u32,
    rank: u32,
    _pad: [u32; 2],
    dims: [u32; MAX_RANK],
    strides: [u32; MAX_RANK],
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct NormalizeParams {
    outer: u32,
    len: u32,
    inner: u32,
    eps: f32,
}

pub(super) fn permute(x: &WgpuTensor, order: &[usize]) -> Result<WgpuTensor> {
    let dims = x.dims();
    if order.len() > MAX_RANK {
        return Err(Error::Shape(format!(
            "permutation of a rank-{} tensor; the GPU kernel handles rank {MAX_RANK}",
            order.len()
        )));
    }
    let mut strides = vec![1usize; dims.len()];
    for k in (0..dims.len().saturating_sub(1)).rev() {
        strides[k] = strides[k + 1] * dims[k + 1];
    }
    let out_dims: Vec<usize> = order.iter().map(|&k| dims[k]).collect();
    let mut params = PermuteParams {
        len: u32_of(x.len(), "elements")?,
        rank: order.len() as u32,
        _pad: [0; 2],
        dims: [1; MAX_RANK],
        strides: [0; MAX_RANK],
    };
    for (k, &from) in order.iter().enumerate() {
        params.dims[k] = u32_of(dims[from], "dimension")?;
        params.strides[k] = u32_of(strides[from], "stride")?;
    }
    let device = x.device();
    let out = device.alloc(&out_dims)?;
    device.dispatch(
        &PERMUTE,
        &params,
        &[x.buffer()?],
        out.buffer()?,
        device.linear_grid(x.len())?,
    )?;
    Ok(out)
}

fn normalize_params(dims: &[usize], axis: usize, eps: f32) -> Result<NormalizeParams> {
    Ok(NormalizeParams {
        outer: u32_of(elem_count(&dims[..axis]), "rows")?,
        len: u32_of(dims[axis], "normalised length")?,
        inner: u32_of(elem_count(&dims[axis + 1..]), "elements per row")?,
        eps,
    })
}

pub(super) fn normalize(x: &WgpuTensor, axis: usize, eps: f32) -> Result<WgpuTensor> {
    run_normalize(&NORMALIZE, x, x, axis, eps)
}

pub(super) fn normalize_vjp(x: &WgpuTensor, grad: &WgpuTensor, axis: usize, eps: f32) -> Result<WgpuTensor> {
    x.check_device(grad)?;
    run_normalize(&NORMALIZE_VJP, x, grad, axis, eps)
}

fn run_normalize(kernel: &Kernel, x: &WgpuTensor, grad: &WgpuTensor, axis: usize, eps: f32) -> Result<WgpuTensor> {
    let params = normalize_params(x.dims(), axis, eps)?;
    let device = x.device();
    let out = device.alloc(x.dims())?;
    let positions = params.outer as usize * params.inner as usize;
    device.dispatch(
        kernel,
        &params,
        &[x.buffer()?, grad.buffer()?],
        out.buffer()?,
        device.linear_grid(positions)?,
    )?;
    Ok(out)
}
