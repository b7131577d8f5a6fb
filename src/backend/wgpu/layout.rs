//! Operations that move elements or normalise along one axis: permutation, narrowing and
//! concatenation along an axis, and the reductions along one axis with their input-VJPs: the
//! LayerNorm/GroupNorm normalisation and softmax.

use bytemuck::{Pod, Zeroable};

use super::{elem_count, u32_of, Kernel, WgpuTensor};
use crate::backend::{BackendStorage, StdTerm};
use crate::error::{Error, Result};

const PERMUTE: Kernel = Kernel {
    name: "permute",
    source: include_str!("kernels/permute.wgsl"),
    entry: "main",
    inputs: 1,
};
const NORMALIZE: Kernel = Kernel {
    name: "normalize",
    source: concat!(
        include_str!("kernels/along_axis.wgsl"),
        include_str!("kernels/normalize.wgsl")
    ),
    entry: "forward",
    inputs: 2,
};
const NORMALIZE_VJP: Kernel = Kernel {
    name: "normalize_vjp",
    source: concat!(
        include_str!("kernels/along_axis.wgsl"),
        include_str!("kernels/normalize.wgsl")
    ),
    entry: "vjp",
    inputs: 2,
};

const SOFTMAX: Kernel = Kernel {
    name: "softmax",
    source: concat!(
        include_str!("kernels/along_axis.wgsl"),
        include_str!("kernels/softmax.wgsl")
    ),
    entry: "forward",
    inputs: 2,
};
const SOFTMAX_VJP: Kernel = Kernel {
    name: "softmax_vjp",
    source: concat!(
        include_str!("kernels/along_axis.wgsl"),
        include_str!("kernels/softmax.wgsl")
    ),
    entry: "vjp",
    inputs: 2,
};

const COPY_BLOCK: Kernel = Kernel {
    name: "copy_block",
    source: include_str!("kernels/copy_block.wgsl"),
    entry: "main",
    inputs: 1,
};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct CopyParams {
    outer: u32,
    len: u32,
    inner: u32,
    src_len: u32,
    src_start: u32,
    dst_len: u32,
    dst_start: u32,
    _pad: u32,
}

/// Copies `len` slices along `axis` from `src` (starting at `src_start`) into `dst` (starting
/// at `dst_start`); the two agree on every other dimension.
fn copy_block(
    src: &WgpuTensor,
    src_start: usize,
    dst: &WgpuTensor,
    dst_start: usize,
    len: usize,
    axis: usize,
) -> Result<()> {
    let dims = src.dims();
    let params = CopyParams {
        outer: u32_of(elem_count(&dims[..axis]), "rows")?,
        len: u32_of(len, "slices")?,
        inner: u32_of(elem_count(&dims[axis + 1..]), "elements per slice")?,
        src_len: u32_of(dims[axis], "source length")?,
        src_start: u32_of(src_start, "source offset")?,
        dst_len: u32_of(dst.dims()[axis], "destination length")?,
        dst_start: u32_of(dst_start, "destination offset")?,
        _pad: 0,
    };
    let device = src.device();
    let count = params.outer as usize * len * params.inner as usize;
    device.dispatch(
        &COPY_BLOCK,
        &params,
        &[src.buffer()?],
        dst.buffer()?,
        device.linear_grid(count)?,
    )
}

pub(super) fn narrow(x: &WgpuTensor, axis: usize, start: usize, len: usize) -> Result<WgpuTensor> {
    let mut dims = x.dims().to_vec();
    dims[axis] = len;
    let out = x.device().alloc(&dims)?;
    copy_block(x, start, &out, 0, len, axis)?;
    Ok(out)
}

pub(super) fn cat(parts: &[&WgpuTensor], axis: usize) -> Result<WgpuTensor> {
    let first = parts
        .first()
        .ok_or_else(|| Error::Shape("concatenation of no tensors".into()))?;
    let mut dims = first.dims().to_vec();
    dims[axis] = parts.iter().map(|p| p.dims()[axis]).sum();
    let out = first.device().alloc(&dims)?;
    let mut offset = 0;
    for part in parts {
        first.check_device(part)?;
        copy_block(part, 0, &out, offset, part.dims()[axis], axis)?;
        offset += part.dims()[axis];
    }
    Ok(out)
}

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

/// x viewed as [outer, len, inner] around the axis a kernel walks (kernels/along_axis.wgsl's
/// `Params`); softmax.wgsl does not read `eps` and `constant_std`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct AxisParams {
    outer: u32,
    len: u32,
    inner: u32,
    eps: f32,
    /// 1: the standard deviation's own gradient is left out (`StdTerm::Constant`).
    constant_std: u32,
    _pad: [u32; 3],
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

fn axis_params(dims: &[usize], axis: usize, eps: f32, std: StdTerm) -> Result<AxisParams> {
    Ok(AxisParams {
        outer: u32_of(elem_count(&dims[..axis]), "rows")?,
        len: u32_of(dims[axis], "axis length")?,
        inner: u32_of(elem_count(&dims[axis + 1..]), "elements per row")?,
        eps,
        constant_std: (std == StdTerm::Constant) as u32,
        _pad: [0; 3],
    })
}

pub(super) fn normalize(x: &WgpuTensor, axis: usize, eps: f32) -> Result<WgpuTensor> {
    let params = axis_params(x.dims(), axis, eps, StdTerm::Differentiated)?;
    run_along_axis(&NORMALIZE, x, x, params)
}

pub(super) fn normalize_vjp(
    x: &WgpuTensor,
    grad: &WgpuTensor,
    axis: usize,
    eps: f32,
    std: StdTerm,
) -> Result<WgpuTensor> {
    x.check_device(grad)?;
    let params = axis_params(x.dims(), axis, eps, std)?;
    run_along_axis(&NORMALIZE_VJP, x, grad, params)
}

pub(super) fn softmax(x: &WgpuTensor, axis: usize) -> Result<WgpuTensor> {
    let params = axis_params(x.dims(), axis, 0.0, StdTerm::Differentiated)?;
    run_along_axis(&SOFTMAX, x, x, params)
}

/// From the softmax output `s`.
pub(super) fn softmax_vjp(s: &WgpuTensor, grad: &WgpuTensor, axis: usize) -> Result<WgpuTensor> {
    s.check_device(grad)?;
    let params = axis_params(s.dims(), axis, 0.0, StdTerm::Differentiated)?;
    run_along_axis(&SOFTMAX_VJP, s, grad, params)
}

/// One thread per position around the axis; `grad` is bound to `x` where the kernel does not
/// read it.
fn run_along_axis(kernel: &Kernel, x: &WgpuTensor, grad: &WgpuTensor, params: AxisParams) -> Result<WgpuTensor> {
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
