//! Element-wise maps, per-channel affine maps and reductions.

use bytemuck::{Pod, Zeroable};

use super::{elem_count, u32_of, Kernel, WgpuTensor};
use crate::backend::{Activation, BackendStorage, Map, Reduce, Zip};
use crate::error::{Error, Result};

const MAP: Kernel = Kernel {
    name: "map",
    source: concat!(
        include_str!("kernels/map.wgsl"),
        include_str!("kernels/activation.wgsl")
    ),
    entry: "main",
    inputs: 1,
};
const ZIP: Kernel = Kernel {
    name: "zip",
    source: concat!(
        include_str!("kernels/zip.wgsl"),
        include_str!("kernels/activation.wgsl")
    ),
    entry: "main",
    inputs: 2,
};
const CHANNEL_AFFINE: Kernel = Kernel {
    name: "channel_affine",
    source: include_str!("kernels/channel_affine.wgsl"),
    entry: "main",
    inputs: 3,
};
const REDUCE_ROWS: Kernel = Kernel {
    name: "reduce_rows",
    source: include_str!("kernels/reduce.wgsl"),
    entry: "rows",
    inputs: 1,
};
const REDUCE_STRIDED: Kernel = Kernel {
    name: "reduce_strided",
    source: include_str!("kernels/reduce.wgsl"),
    entry: "strided",
    inputs: 1,
};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct MapParams {
    len: u32,
    op: u32,
    a: f32,
    b: f32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct ZipParams {
    len: u32,
    op: u32,
    slope: f32,
    _pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct AffineParams {
    len: u32,
    channels: u32,
    inner: u32,
    has_scale: u32,
    has_shift: u32,
    scale_per_sample: u32,
    shift_per_sample: u32,
    /// The (sample, channel) plane the piece starts at, for a tensor split across buffers.
    plane_offset: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct ReduceParams {
    outer: u32,
    mid: u32,
    inner: u32,
    scale: f32,
}

/// The activation's code in activation.wgsl, and its slope parameter.
fn activation_code(activation: Activation) -> (u32, f32) {
    match activation {
        Activation::Relu => (0, 0.0),
        Activation::Relu6 => (1, 0.0),
        Activation::LeakyRelu { negative_slope } => (2, negative_slope),
        Activation::Silu => (3, 0.0),
        Activation::Gelu => (4, 0.0),
        Activation::GeluTanh => (5, 0.0),
        Activation::Sigmoid => (6, 0.0),
        Activation::Tanh => (7, 0.0),
        Activation::Hardswish => (8, 0.0),
        Activation::Hardsigmoid => (9, 0.0),
    }
}

pub(super) fn map(x: &WgpuTensor, op: Map) -> Result<WgpuTensor> {
    let (op, a, b) = match op {
        Map::Affine { mul, add } => (0, mul, add),
        Map::Abs => (1, 0.0, 0.0),
        Map::Sqr => (2, 0.0, 0.0),
        Map::Clamp { low, high } => (3, low, high),
        Map::Stabilize { epsilon } => (4, epsilon, 0.0),
        Map::PositiveMask => (5, 0.0, 0.0),
        Map::NegativeMask => (6, 0.0, 0.0),
        Map::Fill { value } => (7, value, 0.0),
        Map::Activation(activation) => {
            let (code, slope) = activation_code(activation);
            (8 + code, slope, 0.0)
        }
    };
    let device = x.device();
    let out = device.alloc_pieces(x.dims(), &x.piece_lens())?;
    for (piece, out_piece) in x.pieces().iter().zip(out.pieces()) {
        let params = MapParams {
            len: u32_of(piece.len, "elements")?,
            op,
            a,
            b,
        };
        device.dispatch(
            &MAP,
            &params,
            &[&*piece.buffer],
            &out_piece.buffer,
            device.linear_grid(piece.len)?,
        )?;
    }
    Ok(out)
}

pub(super) fn zip(x: &WgpuTensor, rhs: &WgpuTensor, op: Zip) -> Result<WgpuTensor> {
    x.check_device(rhs)?;
    if x.len() != rhs.len() {
        return Err(Error::Shape(format!(
            "element-wise {op:?} of {:?} and {:?}",
            x.dims(),
            rhs.dims()
        )));
    }
    let (op, slope) = match op {
        Zip::Add => (0, 0.0),
        Zip::Sub => (1, 0.0),
        Zip::Mul => (2, 0.0),
        Zip::Div => (3, 0.0),
        Zip::ActivationVjp(activation) => {
            let (code, slope) = activation_code(activation);
            (4 + code, slope)
        }
    };
    // Tensors of one shape on one device are split alike; a reshaped one may not be.
    if x.piece_lens() != rhs.piece_lens() {
        return Err(Error::Device(format!(
            "element-wise {op:?} of {:?} and {:?}, split differently across buffers",
            x.dims(),
            rhs.dims()
        )));
    }
    let device = x.device();
    let out = device.alloc_pieces(x.dims(), &x.piece_lens())?;
    for ((a, b), out_piece) in x.pieces().iter().zip(rhs.pieces()).zip(out.pieces()) {
        let params = ZipParams {
            len: u32_of(a.len, "elements")?,
            op,
            slope,
            _pad: 0,
        };
        device.dispatch(
            &ZIP,
            &params,
            &[&*a.buffer, &*b.buffer],
            &out_piece.buffer,
            device.linear_grid(a.len)?,
        )?;
    }
    Ok(out)
}

pub(super) fn channel_affine(
    x: &WgpuTensor,
    scale: Option<&WgpuTensor>,
    shift: Option<&WgpuTensor>,
) -> Result<WgpuTensor> {
    let dims = x.dims();
    let (n, c) = match dims {
        [n, c, ..] => (*n, *c),
        _ => return Err(Error::Shape(format!("channel_affine of {dims:?}: needs [N, C, ...]"))),
    };
    // Whether a table is one row per sample; any other length than [C] or [N, C] is an error.
    let per_sample = |t: Option<&WgpuTensor>, what: &str| -> Result<u32> {
        let Some(t) = t else { return Ok(0) };
        x.check_device(t)?;
        match t.dims() {
            [k] if *k == c => Ok(0),
            [m, k] if *m == n && *k == c => Ok(1),
            d => Err(Error::Shape(format!(
                "{what} {d:?} for x {dims:?}: needs [{c}] or [{n}, {c}]"
            ))),
        }
    };
    let inner = elem_count(&dims[2..]).max(1);
    let scale_per_sample = per_sample(scale, "scale")?;
    let shift_per_sample = per_sample(shift, "shift")?;
    let device = x.device();
    let out = device.alloc_pieces(dims, &x.piece_lens())?;
    let scale = scale.map(|t| t.buffer()).transpose()?;
    let shift = shift.map(|t| t.buffer()).transpose()?;
    let mut start = 0;
    for (piece, out_piece) in x.pieces().iter().zip(out.pieces()) {
        // Pieces hold whole rows [C, inner...], so each starts at a plane boundary.
        if start % inner != 0 {
            return Err(Error::Device(format!(
                "channel_affine of {dims:?}: a buffer piece starts inside a channel plane"
            )));
        }
        let params = AffineParams {
            len: u32_of(piece.len, "elements")?,
            channels: u32_of(c.max(1), "channels")?,
            inner: u32_of(inner, "elements per channel")?,
            has_scale: scale.is_some() as u32,
            has_shift: shift.is_some() as u32,
            scale_per_sample,
            shift_per_sample,
            plane_offset: u32_of(start / inner, "planes")?,
        };
        // An absent table is bound to the input itself, and skipped by its flag.
        device.dispatch(
            &CHANNEL_AFFINE,
            &params,
            &[
                &*piece.buffer,
                scale.unwrap_or(&piece.buffer),
                shift.unwrap_or(&piece.buffer),
            ],
            &out_piece.buffer,
            device.linear_grid(piece.len)?,
        )?;
        start += piece.len;
    }
    Ok(out)
}

pub(super) fn reduce(x: &WgpuTensor, op: Reduce) -> Result<WgpuTensor> {
    let dims = x.dims();
    let (outer, mid, inner, scale, out_dims) = match (op, dims) {
        (Reduce::MeanHw, [n, c, h, w]) => (n * c, h * w, 1, 1.0 / (h * w) as f32, vec![*n, *c, 1, 1]),
        (Reduce::SumChannels, [n, c, rest @ ..]) => {
            let mut out = vec![*n, 1];
            out.extend_from_slice(rest);
            (*n, *c, elem_count(rest), 1.0, out)
        }
        (Reduce::SumPerSample, [n, rest @ ..]) => (*n, elem_count(rest), 1, 1.0, vec![*n]),
        _ => return Err(Error::Shape(format!("{op:?} of a tensor of shape {dims:?}"))),
    };
    let device = x.device();
    let out = device.alloc(&out_dims)?;
    let params = ReduceParams {
        outer: u32_of(outer, "reduced rows")?,
        mid: u32_of(mid, "reduced length")?,
        inner: u32_of(inner, "reduced stride")?,
        scale,
    };
    if inner == 1 {
        device.dispatch(
            &REDUCE_ROWS,
            &params,
            &[x.buffer()?],
            out.buffer()?,
            super::WgpuDevice::fold(outer)?,
        )?;
    } else {
        device.dispatch(
            &REDUCE_STRIDED,
            &params,
            &[x.buffer()?],
            out.buffer()?,
            device.linear_grid(outer * inner)?,
        )?;
    }
    Ok(out)
}
