//! The candle backend: candle's tensors on CPU or CUDA. Depthwise convolution and max pooling
//! run our own direct kernels on both (CPU loops; CUDA kernels in kernels.cu). On CPU the other
//! heavy operations run our kernels too (im2col + gemm convolution, single-pass element-wise
//! maps); on CUDA they are candle's ops (its im2col + cuBLAS convolution, its element-wise
//! kernels).

mod activation;
mod activation_pass;
#[cfg(target_arch = "x86_64")]
mod avx512_product;
mod composed;
#[cfg(feature = "cuda")]
mod cuda;
mod depthwise;
mod elementwise;
mod fresh;
mod im2col;
mod max_pool;
mod normalize;
mod padding;
mod patches;
mod permute;
#[cfg(test)]
mod product_check;
#[cfg(all(target_arch = "wasm32", target_feature = "relaxed-simd"))]
mod simd128_product;

use candle_core::{DType, Tensor, D};

use super::{Activation, BackendStorage, Map, PoolWindow, Reduce, StdTerm, WindowBins, WindowGeometry, Zip};
use crate::error::Result;
use depthwise::{depthwise_correlate, depthwise_transposed};
use elementwise::on_cpu_f32;
use im2col::{col2im_transpose, im2col_correlate, Sliding};

/// A contiguous f32 candle tensor.
#[derive(Debug, Clone)]
pub struct CandleStorage(pub Tensor);

impl CandleStorage {
    /// Wraps `t` as f32 and contiguous.
    pub fn new(t: Tensor) -> Result<Self> {
        Ok(Self(t.to_dtype(DType::F32)?.contiguous()?))
    }

    fn wrap(t: Tensor) -> Result<Self> {
        Ok(Self(t.contiguous()?))
    }

    fn is_cpu(&self) -> bool {
        on_cpu_f32(&self.0)
    }
}

impl BackendStorage for CandleStorage {
    fn dims(&self) -> &[usize] {
        self.0.dims()
    }

    fn to_vec(&self) -> Result<Vec<f32>> {
        Ok(self.0.flatten_all()?.to_vec1::<f32>()?)
    }

    fn reshape(&self, dims: &[usize]) -> Result<Self> {
        Ok(Self(self.0.reshape(dims)?))
    }

    fn narrow_rows(&self, start: usize, len: usize) -> Result<Self> {
        Self::wrap(self.0.narrow(0, start, len)?)
    }

    fn cat_rows(parts: &[&Self]) -> Result<Self> {
        let tensors: Vec<&Tensor> = parts.iter().map(|p| &p.0).collect();
        Ok(Self(Tensor::cat(&tensors, 0)?))
    }

    fn map(&self, op: Map) -> Result<Self> {
        match self.is_cpu() {
            true => Self::wrap(elementwise::map(&self.0, op)?),
            false => Self::wrap(composed::map(&self.0, op)?),
        }
    }

    fn zip(&self, rhs: &Self, op: Zip) -> Result<Self> {
        match self.is_cpu() {
            true => Self::wrap(elementwise::zip(&self.0, &rhs.0, op)?),
            false => Self::wrap(composed::zip(&self.0, &rhs.0, op)?),
        }
    }

    fn channel_affine(&self, scale: Option<&Self>, shift: Option<&Self>) -> Result<Self> {
        let x = &self.0;
        let shared = |p: Option<&Self>| p.is_none_or(|p| p.0.rank() == 1);
        if self.is_cpu() && shared(scale) && shared(shift) {
            let c = x.dim(1)?;
            let scale = match scale {
                Some(s) => s.to_vec()?,
                None => vec![1.0; c],
            };
            let shift = match shift {
                Some(s) => s.to_vec()?,
                None => vec![0.0; c],
            };
            return Self::wrap(elementwise::channel_affine_activation(x, &scale, &shift, None)?);
        }
        Self::wrap(composed::channel_affine(x, scale.map(|s| &s.0), shift.map(|s| &s.0))?)
    }

    fn channel_affine_activation(&self, scale: &Self, shift: &Self, activation: Activation) -> Result<Self> {
        if !self.is_cpu() || scale.0.rank() != 1 || shift.0.rank() != 1 {
            let affine = self.channel_affine(Some(scale), Some(shift))?;
            return affine.map(Map::Activation(activation));
        }
        let (scale, shift) = (scale.to_vec()?, shift.to_vec()?);
        Self::wrap(elementwise::channel_affine_activation(
            &self.0,
            &scale,
            &shift,
            Some(activation),
        )?)
    }

    fn channel_affine_activation_vjp(&self, grad: &Self, scale: &Self, activation: Activation) -> Result<Self> {
        if !self.is_cpu() || scale.0.rank() != 1 {
            let through = self.zip(grad, Zip::ActivationVjp(activation))?;
            return through.channel_affine(Some(scale), None);
        }
        Self::wrap(elementwise::activation_channel_scale_vjp(
            &self.0,
            &grad.0,
            &scale.to_vec()?,
            activation,
        )?)
    }

    fn reduce(&self, op: Reduce) -> Result<Self> {
        let x = &self.0;
        Self::wrap(match op {
            Reduce::MeanHw => x.mean_keepdim(D::Minus1)?.mean_keepdim(D::Minus2)?,
            Reduce::SumChannels => x.sum_keepdim(1)?,
            // Through [N, rest]: a rank-1 [N] holds samples of one element each, which
            // flatten_from(1) would refuse.
            Reduce::SumPerSample => x
                .reshape((x.dim(0)?, x.dims()[1..].iter().product::<usize>()))?
                .sum(1)?,
        })
    }

    fn matmul(&self, rhs: &Self, rhs_transposed: bool) -> Result<Self> {
        let rhs = if rhs_transposed { rhs.0.t()? } else { rhs.0.clone() };
        Self::wrap(self.0.matmul(&rhs)?)
    }

    fn batched_matmul(&self, rhs: &Self, rhs_transposed: bool) -> Result<Self> {
        let rhs = if rhs_transposed {
            rhs.0.transpose(1, 2)?
        } else {
            rhs.0.clone()
        };
        Self::wrap(self.0.matmul(&rhs)?)
    }

    fn conv2d(&self, kernel: &Self, geometry: &WindowGeometry) -> Result<Self> {
        let (x, kernel) = (&self.0, &kernel.0);
        let (h, w) = (x.dim(2)?, x.dim(3)?);
        let out_hw = geometry.output_hw((h, w)).expect("checked by Tensor::conv2d");
        if is_depthwise(geometry, x.dim(1)?, kernel)? {
            return Self::wrap(depthwise_correlate(x, kernel, sliding(geometry, out_hw))?);
        }
        if self.is_cpu() {
            return Self::wrap(im2col_correlate(x, kernel, sliding(geometry, out_hw))?);
        }
        Self::wrap(composed::conv2d(x, kernel, geometry)?)
    }

    /// Depthwise by its direct kernel; otherwise on CPU the columns kernel^T @ grad scattered
    /// back (col2im), elsewhere the composition in `composed.rs`.
    fn conv2d_transposed(&self, kernel: &Self, geometry: &WindowGeometry, input_hw: (usize, usize)) -> Result<Self> {
        let (grad, kernel) = (&self.0, &kernel.0);
        let grad_sliding = || -> Result<Sliding> { Ok(sliding(geometry, (grad.dim(2)?, grad.dim(3)?))) };
        if is_depthwise(geometry, grad.dim(1)?, kernel)? {
            return Self::wrap(depthwise_transposed(grad, kernel, grad_sliding()?, input_hw)?);
        }
        if self.is_cpu() {
            return Self::wrap(col2im_transpose(grad, kernel, grad_sliding()?, input_hw)?);
        }
        Self::wrap(composed::conv2d_transposed(grad, kernel, geometry, input_hw)?)
    }

    fn max_pool(&self, window: &PoolWindow) -> Result<Self> {
        let x = &self.0;
        let out_hw = window
            .output_hw((x.dim(2)?, x.dim(3)?))
            .expect("checked by Tensor::max_pool");
        Self::wrap(max_pool::max_pool(x, *window, out_hw)?)
    }

    fn max_pool_vjp(&self, grad: &Self, window: &PoolWindow) -> Result<Self> {
        Self::wrap(max_pool::max_pool_vjp(&self.0, &grad.0, *window)?)
    }

    /// Separable: rows [Ho, H] x X x cols^T [W, Wo], divided by each window's divisor.
    fn window_mean(&self, bins: &WindowBins) -> Result<Self> {
        let x = &self.0;
        let (rows, cols, divisors) = bin_matrices(bins, x.device())?;
        let sums = rows.broadcast_matmul(&x.broadcast_matmul(&cols.t()?)?)?;
        Self::wrap(sums.broadcast_div(&divisors)?)
    }

    fn window_mean_vjp(&self, bins: &WindowBins) -> Result<Self> {
        let grad = &self.0;
        let (rows, cols, divisors) = bin_matrices(bins, grad.device())?;
        let per_cell = grad.broadcast_div(&divisors)?;
        Self::wrap(rows.t()?.broadcast_matmul(&per_cell.broadcast_matmul(&cols)?)?)
    }

    fn permute(&self, order: &[usize]) -> Result<Self> {
        if self.is_cpu() {
            if let Some(permuted) = permute::permute_as_transpose(&self.0, order)? {
                return Ok(Self(permuted));
            }
        }
        Self::wrap(self.0.permute(order)?)
    }

    fn narrow(&self, axis: usize, start: usize, len: usize) -> Result<Self> {
        Self::wrap(self.0.narrow(axis, start, len)?)
    }

    fn cat(parts: &[&Self], axis: usize) -> Result<Self> {
        let tensors: Vec<&Tensor> = parts.iter().map(|p| &p.0).collect();
        Ok(Self(Tensor::cat(&tensors, axis)?))
    }

    fn normalize(&self, axis: usize, eps: f32) -> Result<Self> {
        if self.is_cpu() {
            return Self::wrap(normalize::normalize(&self.0, axis, eps)?);
        }
        let (centred, inv_std) = normalize_parts(&self.0, axis, eps)?;
        Self::wrap(centred.broadcast_mul(&inv_std)?)
    }

    /// dx = (g - mean(g) - y * mean(g * y)) / sqrt(var + eps), y the normalised x; without
    /// the y term when the standard deviation is held constant.
    fn normalize_vjp(&self, grad: &Self, axis: usize, eps: f32, std: StdTerm) -> Result<Self> {
        if self.is_cpu() {
            return Self::wrap(normalize::normalize_vjp(&self.0, &grad.0, axis, eps, std)?);
        }
        let (centred, inv_std) = normalize_parts(&self.0, axis, eps)?;
        let g = &grad.0;
        let mut dx = g.broadcast_sub(&g.mean_keepdim(axis)?)?;
        if std == StdTerm::Differentiated {
            let y = centred.broadcast_mul(&inv_std)?;
            let along = (g * &y)?.mean_keepdim(axis)?;
            dx = dx.sub(&y.broadcast_mul(&along)?)?;
        }
        Self::wrap(dx.broadcast_mul(&inv_std)?)
    }

    fn softmax(&self, axis: usize) -> Result<Self> {
        let x = &self.0;
        let exp = x.broadcast_sub(&x.max_keepdim(axis)?)?.exp()?;
        Self::wrap(exp.broadcast_div(&exp.sum_keepdim(axis)?)?)
    }

    fn softmax_vjp(&self, grad: &Self, axis: usize) -> Result<Self> {
        let (s, g) = (&self.0, &grad.0);
        let along = (g * s)?.sum_keepdim(axis)?;
        Self::wrap((g.broadcast_sub(&along)? * s)?)
    }
}

/// x - mean and 1 / sqrt(var + eps) along `axis` (kept as size 1).
fn normalize_parts(x: &Tensor, axis: usize, eps: f32) -> Result<(Tensor, Tensor)> {
    let centred = x.broadcast_sub(&x.mean_keepdim(axis)?)?;
    let inv_std = centred
        .sqr()?
        .mean_keepdim(axis)?
        .affine(1.0, eps as f64)?
        .sqrt()?
        .recip()?;
    Ok((centred, inv_std))
}

/// 0/1 membership matrices [Ho, H] and [Wo, W], and the divisors [Ho, Wo].
fn bin_matrices(bins: &WindowBins, device: &candle_core::Device) -> Result<(Tensor, Tensor, Tensor)> {
    let membership = |ranges: &[(usize, usize)], len: usize| -> Result<Tensor> {
        let mut data = vec![0f32; ranges.len() * len];
        for (i, &(start, end)) in ranges.iter().enumerate() {
            data[i * len + start..i * len + end].fill(1.0);
        }
        Ok(Tensor::from_vec(data, (ranges.len(), len), device)?)
    };
    let (h, w) = bins.input_hw;
    let (ho, wo) = bins.output_hw();
    let divisors: Vec<f32> = (0..ho).flat_map(|i| (0..wo).map(move |j| bins.divisor(i, j))).collect();
    Ok((
        membership(&bins.rows, h)?,
        membership(&bins.cols, w)?,
        Tensor::from_vec(divisors, (ho, wo), device)?,
    ))
}

fn sliding(geometry: &WindowGeometry, out_hw: (usize, usize)) -> Sliding {
    let (t, _, l, _) = geometry.padding;
    Sliding {
        stride: geometry.stride,
        dilation: geometry.dilation,
        groups: geometry.groups,
        pad_top: t,
        pad_left: l,
        out_hw,
    }
}

/// One filter per channel ([C, 1, kh, kw], C groups): the direct depthwise kernels apply.
fn is_depthwise(geometry: &WindowGeometry, channels: usize, kernel: &Tensor) -> Result<bool> {
    let g = geometry.groups;
    Ok(g > 1 && channels == g && kernel.dim(0)? == g && kernel.dim(1)? == 1)
}
