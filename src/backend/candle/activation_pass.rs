//! The CPU loops of the activations other than ReLU and ReLU6 (SiLU, GELU, sigmoid, tanh, ...),
//! forward and back: one loop per activation with it known at compile time, so that
//! `Activation::value` (always inlined) folds to that activation's arm and the loop vectorises;
//! on x86-64 CPUs with AVX-512, compiled for them too. Their f64 arithmetic (`smooth.rs`) then
//! takes 8 lanes a vector instead of the baseline build's 2: GELU's and SiLU's libm calls, one
//! element at a time, had been a quarter to a half of ConvNeXt's and EfficientNet's gradients.

use std::mem::MaybeUninit;

use crate::backend::Activation;

/// What one chunk of an activation's pass computes, element by element, into its output.
#[derive(Clone, Copy)]
pub(super) enum Pass<'a> {
    /// activation(x)
    Value { x: &'a [f32] },
    /// activation(x * scale + shift): a BatchNorm or LayerNorm's affine map fused before it.
    AffineValue { x: &'a [f32], scale: f32, shift: f32 },
    /// grad * activation'(x)
    Vjp { x: &'a [f32], grad: &'a [f32] },
}

/// Writes `pass` of `activation` into `out` (as long as the pass's inputs).
pub(super) fn run(activation: Activation, pass: Pass, out: &mut [MaybeUninit<f32>]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512 Foundation, checked just above.
        return unsafe { run_avx512(activation, pass, out) };
    }
    run_inline(activation, pass, out);
}

/// [`run_inline`] compiled for AVX-512.
///
/// # Safety
/// The CPU must have AVX-512 Foundation.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn run_avx512(activation: Activation, pass: Pass, out: &mut [MaybeUninit<f32>]) {
    run_inline(activation, pass, out);
}

/// `$body` with `$known` a constant for each activation without parameters, so that the loops
/// in `$body` are compiled for that activation alone; the others get the value at run time.
macro_rules! per_activation {
    ($activation:expr, |$known:ident| $body:expr) => {
        match $activation {
            Activation::Silu => {
                const $known: Activation = Activation::Silu;
                $body
            }
            Activation::Gelu => {
                const $known: Activation = Activation::Gelu;
                $body
            }
            Activation::GeluTanh => {
                const $known: Activation = Activation::GeluTanh;
                $body
            }
            Activation::Sigmoid => {
                const $known: Activation = Activation::Sigmoid;
                $body
            }
            Activation::Tanh => {
                const $known: Activation = Activation::Tanh;
                $body
            }
            #[allow(non_snake_case)]
            $known => $body,
        }
    };
}

#[inline(always)]
fn run_inline(activation: Activation, pass: Pass, out: &mut [MaybeUninit<f32>]) {
    per_activation!(activation, |ACTIVATION| match pass {
        Pass::Value { x } => {
            for (o, &v) in out.iter_mut().zip(x) {
                o.write(ACTIVATION.value(v));
            }
        }
        Pass::AffineValue { x, scale, shift } => {
            for (o, &v) in out.iter_mut().zip(x) {
                o.write(ACTIVATION.value(v * scale + shift));
            }
        }
        Pass::Vjp { x, grad } => {
            for (o, (&v, &g)) in out.iter_mut().zip(x.iter().zip(grad)) {
                o.write(g * ACTIVATION.derivative(v));
            }
        }
    })
}
