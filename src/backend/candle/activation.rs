//! Activations and their derivatives composed of candle ops, for candle devices other than
//! the CPU (whose single-pass kernels are in `elementwise.rs`). Same formulas as
//! [`Activation::value`] and [`Activation::derivative`], PyTorch's kinks included.

use candle_core::{DType, Tensor};

use crate::backend::Activation;
use crate::error::Result;

fn mask(t: &Tensor) -> Result<Tensor> {
    Ok(t.to_dtype(DType::F32)?)
}

fn sigmoid(x: &Tensor) -> Result<Tensor> {
    Ok(x.neg()?.exp()?.affine(1.0, 1.0)?.recip()?)
}

/// Phi(x), the standard normal CDF.
fn normal_cdf(x: &Tensor) -> Result<Tensor> {
    Ok(x.affine(std::f64::consts::FRAC_1_SQRT_2, 0.0)?
        .erf()?
        .affine(0.5, 0.5)?)
}

/// 0 where x < low, 1 where low <= x < high... as `lo_ok(x) * hi_ok(x)` masks.
fn between(x: &Tensor, low: f32, high: f32, inclusive_high: bool) -> Result<Tensor> {
    let above = mask(&x.gt(low)?)?;
    let below = if inclusive_high { x.le(high)? } else { x.lt(high)? };
    Ok((above * mask(&below)?)?)
}

pub(super) fn forward(activation: Activation, x: &Tensor) -> Result<Tensor> {
    Ok(match activation {
        Activation::Relu => x.relu()?,
        Activation::Relu6 => x.clamp(0f32, 6f32)?,
        Activation::LeakyRelu { negative_slope } => {
            (x.relu()? + x.minimum(0f32)?.affine(negative_slope as f64, 0.0)?)?
        }
        Activation::Silu => x.silu()?,
        Activation::Gelu => x.gelu_erf()?,
        Activation::GeluTanh => x.gelu()?,
        Activation::Sigmoid => sigmoid(x)?,
        Activation::Tanh => x.tanh()?,
        Activation::Hardswish => (x * x.affine(1.0, 3.0)?.clamp(0f32, 6f32)?.affine(1.0 / 6.0, 0.0)?)?,
        Activation::Hardsigmoid => x.affine(1.0, 3.0)?.clamp(0f32, 6f32)?.affine(1.0 / 6.0, 0.0)?,
    })
}

pub(super) fn derivative(activation: Activation, x: &Tensor) -> Result<Tensor> {
    Ok(match activation {
        Activation::Relu => mask(&x.gt(0f32)?)?,
        Activation::Relu6 => between(x, 0.0, 6.0, false)?,
        Activation::LeakyRelu { negative_slope } => {
            let ns = negative_slope as f64;
            mask(&x.gt(0f32)?)?.affine(1.0 - ns, ns)?
        }
        Activation::Silu => {
            let s = sigmoid(x)?;
            // s * (1 + x * (1 - s))
            (&s * (x * s.affine(-1.0, 1.0)?)?.affine(1.0, 1.0)?)?
        }
        Activation::Gelu => {
            let density = x
                .sqr()?
                .affine(-0.5, 0.0)?
                .exp()?
                .affine(1.0 / (2.0 * std::f64::consts::PI).sqrt(), 0.0)?;
            (normal_cdf(x)? + (x * density)?)?
        }
        Activation::GeluTanh => {
            const SCALE: f64 = 0.797_884_560_802_865_4;
            const CUBIC: f64 = 0.044_715;
            let x2 = x.sqr()?;
            let t = (x * x2.affine(CUBIC, 1.0)?)?.affine(SCALE, 0.0)?.tanh()?;
            let d_inner = x2.affine(3.0 * CUBIC * SCALE, SCALE)?;
            let one_minus_t2 = t.sqr()?.affine(-1.0, 1.0)?;
            (t.affine(0.5, 0.5)? + (x * one_minus_t2)?.mul(&d_inner)?.affine(0.5, 0.0)?)?
        }
        Activation::Sigmoid => {
            let s = sigmoid(x)?;
            (&s * s.affine(-1.0, 1.0)?)?
        }
        Activation::Tanh => x.tanh()?.sqr()?.affine(-1.0, 1.0)?,
        Activation::Hardswish => {
            // 0 below -3, x/3 + 1/2 on [-3, 3], 1 above.
            let middle = (between(x, -3.0, 3.0, true)? + mask(&x.eq(-3f32)?)?)?;
            let above = mask(&x.gt(3f32)?)?;
            ((middle * x.affine(1.0 / 3.0, 0.5)?)? + above)?
        }
        Activation::Hardsigmoid => between(x, -3.0, 3.0, false)?.affine(1.0 / 6.0, 0.0)?,
    })
}
