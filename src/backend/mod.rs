//! The tensor operations the engine is written against, and the backends that provide them.
//!
//! Layers, LRP rules, canonizers and methods only use [`crate::Tensor`], which holds the
//! storage of one backend and forwards every operation to it. A backend is one implementation
//! of [`BackendStorage`]: candle's tensors (CPU, CUDA), or our own WGSL kernels on wgpu.
//! The set is deliberately small: every operation is either element-wise, a per-channel
//! affine map, a reduction, or the forward or input-VJP of one layer kind.

pub mod candle;
mod geometry;
mod smooth;
#[cfg(feature = "wgpu")]
pub mod wgpu;

pub use geometry::{PoolWindow, WindowBins, WindowGeometry};
use smooth::{normal_cdf, sigmoid, tanh, MulAdd, Separate};

use crate::error::Result;

/// Element-wise maps of one tensor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Map {
    /// x * mul + add
    Affine {
        mul: f32,
        add: f32,
    },
    Abs,
    Sqr,
    /// min(max(x, low), high)
    Clamp {
        low: f32,
        high: f32,
    },
    /// zennit's stabiliser: x + epsilon * sign(x), with sign(0) = +1.
    Stabilize {
        epsilon: f32,
    },
    /// 1 where x > 0, else 0.
    PositiveMask,
    /// 1 where x < 0, else 0.
    NegativeMask,
    /// Every element set to `value` (ones_like, zeros_like).
    Fill {
        value: f32,
    },
    Activation(Activation),
}

/// The activations a graph may hold. Values and derivatives follow PyTorch's, kinks included:
/// ReLU passes the gradient where x > 0, ReLU6 (hardtanh) where 0 < x < 6, LeakyReLU uses the
/// slope where x <= 0, Hardswish has slope x/3 + 1/2 on [-3, 3] and Hardsigmoid 1/6 on (-3, 3).
/// The smooth ones are evaluated in f64 (`smooth.rs`) and rounded once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Activation {
    Relu,
    Relu6,
    LeakyRelu {
        negative_slope: f32,
    },
    /// x * sigmoid(x), also called Swish.
    Silu,
    /// x * Phi(x) with the exact normal CDF (PyTorch's `approximate='none'`).
    Gelu,
    /// GELU with PyTorch's tanh approximation (`approximate='tanh'`).
    GeluTanh,
    Sigmoid,
    Tanh,
    /// x * relu6(x + 3) / 6
    Hardswish,
    /// relu6(x + 3) / 6
    Hardsigmoid,
}

/// sqrt(2 / pi) and the cubic coefficient of GELU's tanh form.
const GELU_TANH_SCALE: f64 = 0.797_884_560_802_865_4;
const GELU_TANH_CUBIC: f64 = 0.044_715;

impl Activation {
    #[inline]
    pub fn value(self, x: f32) -> f32 {
        self.value_with::<Separate>(x)
    }

    #[inline]
    pub fn derivative(self, x: f32) -> f32 {
        self.derivative_with::<Separate>(x)
    }

    /// [`Self::value`] with the polynomials' steps computed by `M` (fused in loops compiled for
    /// FMA). Always inlined: with `self` known, as in the element-wise loops, only its arm
    /// remains.
    #[inline(always)]
    pub(crate) fn value_with<M: MulAdd>(self, x: f32) -> f32 {
        let v = x as f64;
        (match self {
            Activation::Relu => return x.max(0.0),
            Activation::Relu6 => return x.clamp(0.0, 6.0),
            Activation::LeakyRelu { negative_slope } => return if x > 0.0 { x } else { x * negative_slope },
            Activation::Silu => v * sigmoid::<M>(v),
            Activation::Gelu => v * normal_cdf::<M>(v),
            // 0.5 (1 + tanh(u)) = sigmoid(2u), which does not cancel where tanh(u) nears -1.
            Activation::GeluTanh => v * sigmoid::<M>(2.0 * GELU_TANH_SCALE * (v + GELU_TANH_CUBIC * v * v * v)),
            Activation::Sigmoid => sigmoid::<M>(v),
            Activation::Tanh => tanh::<M>(v),
            Activation::Hardswish => v * (v + 3.0).clamp(0.0, 6.0) / 6.0,
            Activation::Hardsigmoid => (v + 3.0).clamp(0.0, 6.0) / 6.0,
        }) as f32
    }

    /// [`Self::derivative`] with the polynomials' steps computed by `M`.
    #[inline(always)]
    pub(crate) fn derivative_with<M: MulAdd>(self, x: f32) -> f32 {
        let v = x as f64;
        (match self {
            Activation::Relu => return (x > 0.0) as u8 as f32,
            Activation::Relu6 => return (x > 0.0 && x < 6.0) as u8 as f32,
            Activation::LeakyRelu { negative_slope } => return if x > 0.0 { 1.0 } else { negative_slope },
            Activation::Silu => {
                let s = sigmoid::<M>(v);
                s * (1.0 + v * (1.0 - s))
            }
            Activation::Gelu => {
                // 1 / √(2π) as a factor: a division, even by a constant, takes the vector
                // divider for as long as a dozen other steps.
                const FRAC_1_SQRT_2PI: f64 = 0.398_942_280_401_432_7;
                let density = smooth::gaussian::<M>(v) * FRAC_1_SQRT_2PI;
                normal_cdf::<M>(v) + v * density
            }
            Activation::GeluTanh => {
                // With s = sigmoid(2u) = 0.5 (1 + tanh(u)): 1 - tanh(u)² = 4 s (1 - s).
                let s = sigmoid::<M>(2.0 * GELU_TANH_SCALE * (v + GELU_TANH_CUBIC * v * v * v));
                let d_inner = GELU_TANH_SCALE * (1.0 + 3.0 * GELU_TANH_CUBIC * v * v);
                s + 2.0 * v * s * (1.0 - s) * d_inner
            }
            // s (1 - s) and 1 - tanh² as e / (1 + e)² with e = e^-|x| (e^-2|x|), which do not
            // cancel in the tails.
            Activation::Sigmoid => {
                let e = smooth::exp::<M>(-v.abs());
                e / ((1.0 + e) * (1.0 + e))
            }
            Activation::Tanh => {
                let e = smooth::exp::<M>(-2.0 * v.abs());
                4.0 * e / ((1.0 + e) * (1.0 + e))
            }
            Activation::Hardswish if v < -3.0 => 0.0,
            Activation::Hardswish if v <= 3.0 => v / 3.0 + 0.5,
            Activation::Hardswish => 1.0,
            Activation::Hardsigmoid if v > -3.0 && v < 3.0 => 1.0 / 6.0,
            Activation::Hardsigmoid => 0.0,
        }) as f32
    }
}

/// Element-wise maps of two tensors of the same shape.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Zip {
    Add,
    Sub,
    Mul,
    Div,
    /// (x, grad) -> grad * activation'(x)
    ActivationVjp(Activation),
}

/// Reductions. The kept dimensions stay (as size 1) so results broadcast back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reduce {
    /// [N, C, H, W] -> [N, C, 1, 1]: the spatial mean.
    MeanHw,
    /// [N, C, ...] -> [N, 1, ...]: the sum over channels.
    SumChannels,
    /// [N, ...] -> [N]: the sum of each sample.
    SumPerSample,
}

/// Whether `normalize_vjp` differentiates through the standard deviation (the true gradient)
/// or holds it constant (lxt's identity rule for LayerNorm: only the centring stays linear).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StdTerm {
    Differentiated,
    Constant,
}

/// One backend's tensor storage: dense, row-major f32, living on that backend's device.
/// Shapes are checked by the caller ([`crate::Tensor`] and the layers); a backend may assume
/// them.
pub trait BackendStorage: Sized + Clone + std::fmt::Debug {
    fn dims(&self) -> &[usize];

    /// The elements, row-major, copied to the host.
    fn to_vec(&self) -> Result<Vec<f32>>;

    /// The same elements under another shape of the same size.
    fn reshape(&self, dims: &[usize]) -> Result<Self>;

    /// Rows `start..start + len` of the first dimension.
    fn narrow_rows(&self, start: usize, len: usize) -> Result<Self>;

    /// Concatenation along the first dimension.
    fn cat_rows(parts: &[&Self]) -> Result<Self>;

    fn map(&self, op: Map) -> Result<Self>;

    fn zip(&self, rhs: &Self, op: Zip) -> Result<Self>;

    /// x[n, c, ...] * scale[c] + shift[c] for x of shape [N, C, ...]; `scale` and `shift` are
    /// [C] (shared by all samples) or [N, C] (one row per sample).
    fn channel_affine(&self, scale: Option<&Self>, shift: Option<&Self>) -> Result<Self>;

    /// `channel_affine` with [C] parameters, then `activation` (a BatchNorm and the ReLU after
    /// it): one pass where the backend fuses them, the same values either way.
    fn channel_affine_activation(&self, scale: &Self, shift: &Self, activation: Activation) -> Result<Self> {
        self.channel_affine(Some(scale), Some(shift))?
            .map(Map::Activation(activation))
    }

    /// The input-VJP of `channel_affine_activation` for an activation whose derivative its
    /// output gives (ReLU, ReLU6): `grad` through the activation's derivative at `self` (the
    /// output), then times `scale` per channel, as the two layers' VJPs would take it.
    fn channel_affine_activation_vjp(&self, grad: &Self, scale: &Self, activation: Activation) -> Result<Self> {
        self.zip(grad, Zip::ActivationVjp(activation))?
            .channel_affine(Some(scale), None)
    }

    fn reduce(&self, op: Reduce) -> Result<Self>;

    /// [M, K] x [K, N] -> [M, N], or [M, K] x [N, K]^T when `rhs_transposed`.
    fn matmul(&self, rhs: &Self, rhs_transposed: bool) -> Result<Self>;

    /// [B, M, K] x [B, K, N] -> [B, M, N], or x [B, N, K]^T when `rhs_transposed`: one product
    /// of two activations per batch element (attention's scores and mixing).
    fn batched_matmul(&self, rhs: &Self, rhs_transposed: bool) -> Result<Self>;

    /// Correlation of [N, C_in, H, W] with a [C_out, C_in / groups, kh, kw] kernel.
    fn conv2d(&self, kernel: &Self, geometry: &WindowGeometry) -> Result<Self>;

    /// The input-VJP of `conv2d`: a gradient [N, C_out, Ho, Wo] back to [N, C_in, H, W].
    fn conv2d_transposed(&self, kernel: &Self, geometry: &WindowGeometry, input_hw: (usize, usize)) -> Result<Self>;

    /// Max pooling of [N, C, H, W] (PyTorch's padding, dilation and ceil_mode).
    fn max_pool(&self, window: &PoolWindow) -> Result<Self>;

    /// The input-VJP of max pooling at this input: each window's gradient goes to its first
    /// maximum in row-major order (PyTorch's rule for ties).
    fn max_pool_vjp(&self, grad: &Self, window: &PoolWindow) -> Result<Self>;

    /// Means over the windows of `bins`: [N, C, H, W] -> [N, C, Ho, Wo].
    fn window_mean(&self, bins: &WindowBins) -> Result<Self>;

    /// The input-VJP of `window_mean`: [N, C, Ho, Wo] -> [N, C, H, W].
    fn window_mean_vjp(&self, bins: &WindowBins) -> Result<Self>;

    /// The dimensions reordered: output dimension k is input dimension `order[k]`.
    fn permute(&self, order: &[usize]) -> Result<Self>;

    /// Slices `start..start + len` along `axis`.
    fn narrow(&self, axis: usize, start: usize, len: usize) -> Result<Self>;

    /// Concatenation along `axis` of tensors that agree on every other dimension.
    fn cat(parts: &[&Self], axis: usize) -> Result<Self>;

    /// (x - mean) / sqrt(var + eps) along dimension `axis`, with the biased variance (as
    /// PyTorch's LayerNorm and GroupNorm).
    fn normalize(&self, axis: usize, eps: f32) -> Result<Self>;

    /// The input-VJP of `normalize` at this input, through the standard deviation or with it
    /// held constant.
    fn normalize_vjp(&self, grad: &Self, axis: usize, eps: f32, std: StdTerm) -> Result<Self>;

    /// exp(x - max) / sum(exp(x - max)) along dimension `axis` (PyTorch's `softmax(dim)`).
    fn softmax(&self, axis: usize) -> Result<Self>;

    /// The input-VJP of `softmax`, from its output s: s * (grad - sum(grad * s)) along `axis`.
    fn softmax_vjp(&self, grad: &Self, axis: usize) -> Result<Self>;
}
