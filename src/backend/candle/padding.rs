//! Building blocks of the device-generic candle paths (CUDA): explicit padding and cropping,
//! zero-insertion (the "dilation" a strided convolution's input-gradient needs) and spatial
//! flips. Everything here is made of candle forward ops, so it runs on every candle device.

use candle_core::Tensor;

use crate::error::Result;

/// Pads (positive amounts) or crops (negative amounts) the last two dimensions of a 4-D tensor,
/// filling new cells with `value`.
pub fn pad_or_crop_hw(x: &Tensor, top: isize, bottom: isize, left: isize, right: isize, value: f32) -> Result<Tensor> {
    let x = pad_or_crop_dim(x, 2, top, bottom, value)?;
    pad_or_crop_dim(&x, 3, left, right, value)
}

fn pad_or_crop_dim(x: &Tensor, dim: usize, before: isize, after: isize, value: f32) -> Result<Tensor> {
    let mut x = x.clone();
    if before < 0 || after < 0 {
        let len = x.dim(dim)? as isize;
        let start = (-before).max(0);
        let end = len - (-after).max(0);
        if end <= start {
            return Err(candle_core::Error::Msg(format!(
                "cropping dimension {dim} of size {len} by {before},{after} leaves nothing"
            ))
            .into());
        }
        x = x.narrow(dim, start as usize, (end - start) as usize)?;
    }
    let (before, after) = (before.max(0) as usize, after.max(0) as usize);
    if before == 0 && after == 0 {
        return Ok(x);
    }
    if value == 0.0 {
        return Ok(x.pad_with_zeros(dim, before, after)?);
    }
    let mut parts = Vec::with_capacity(3);
    let filler = |n: usize| -> Result<Tensor> {
        let mut dims = x.dims().to_vec();
        dims[dim] = n;
        Ok(Tensor::full(value, dims, x.device())?.to_dtype(x.dtype())?)
    };
    if before > 0 {
        parts.push(filler(before)?);
    }
    parts.push(x.clone());
    if after > 0 {
        parts.push(filler(after)?);
    }
    Ok(Tensor::cat(&parts, dim)?)
}

/// Inserts `stride - 1` zeros between neighbouring cells of the last two dimensions:
/// [.., H, W] becomes [.., (H-1)*stride+1, (W-1)*stride+1].
pub fn insert_zeros_hw(x: &Tensor, stride_h: usize, stride_w: usize) -> Result<Tensor> {
    let x = insert_zeros_dim(x, 3, stride_w)?;
    insert_zeros_dim(&x, 2, stride_h)
}

fn insert_zeros_dim(x: &Tensor, dim: usize, stride: usize) -> Result<Tensor> {
    if stride == 1 {
        return Ok(x.clone());
    }
    let len = x.dim(dim)?;
    let spread = x.unsqueeze(dim + 1)?.pad_with_zeros(dim + 1, 0, stride - 1)?;
    let mut dims = x.dims().to_vec();
    dims[dim] = len * stride;
    Ok(spread.reshape(dims)?.narrow(dim, 0, (len - 1) * stride + 1)?)
}

/// Reverses the last two dimensions (the spatial flip of a convolution kernel).
pub fn flip_hw(x: &Tensor) -> Result<Tensor> {
    let flip = |x: &Tensor, dim: usize| -> Result<Tensor> {
        let n = x.dim(dim)?;
        let idx: Vec<u32> = (0..n as u32).rev().collect();
        let idx = Tensor::new(idx, x.device())?;
        Ok(x.index_select(&idx, dim)?)
    };
    let x = flip(x, 2)?;
    flip(&x, 3)
}
