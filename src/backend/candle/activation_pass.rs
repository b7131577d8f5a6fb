//! The CPU loops of the activations other than ReLU and ReLU6 (SiLU, GELU, sigmoid, tanh, ...),
//! forward and back: one loop per activation with it known at compile time, so that
//! `Activation::value_with` (always inlined) folds to that activation's arm and the loop
//! vectorises; on x86-64 CPUs with AVX-512, or AVX2 and FMA, compiled for them too, with the
//! polynomials' steps fused. Their f64 arithmetic (`smooth.rs`) then takes 8 (or 4) lanes a
//! vector instead of the baseline build's 2: GELU's and SiLU's libm calls, one element at a
//! time, had been a quarter to a half of ConvNeXt's and EfficientNet's gradients.

use std::mem::MaybeUninit;

#[cfg(target_arch = "x86_64")]
use crate::backend::smooth::Fused;
use crate::backend::smooth::{MulAdd, Separate};
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
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512 Foundation (which brings FMA), checked just above.
            return unsafe { run_avx512(activation, pass, out) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has AVX2 and FMA, checked just above.
            return unsafe { run_avx2_fma(activation, pass, out) };
        }
    }
    run_inline::<Separate>(activation, pass, out);
}

/// [`run_inline`] compiled for AVX-512, with fused steps.
///
/// # Safety
/// The CPU must have AVX-512 Foundation.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn run_avx512(activation: Activation, pass: Pass, out: &mut [MaybeUninit<f32>]) {
    run_inline::<Fused>(activation, pass, out);
}

/// [`run_inline`] compiled for AVX2 and FMA, with fused steps.
///
/// # Safety
/// The CPU must have AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn run_avx2_fma(activation: Activation, pass: Pass, out: &mut [MaybeUninit<f32>]) {
    run_inline::<Fused>(activation, pass, out);
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
fn run_inline<M: MulAdd>(activation: Activation, pass: Pass, out: &mut [MaybeUninit<f32>]) {
    per_activation!(activation, |ACTIVATION| match pass {
        Pass::Value { x } => {
            for (o, &v) in out.iter_mut().zip(x) {
                o.write(ACTIVATION.value_with::<M>(v));
            }
        }
        Pass::AffineValue { x, scale, shift } => {
            for (o, &v) in out.iter_mut().zip(x) {
                o.write(ACTIVATION.value_with::<M>(v * scale + shift));
            }
        }
        Pass::Vjp { x, grad } => {
            for (o, (&v, &g)) in out.iter_mut().zip(x.iter().zip(grad)) {
                o.write(g * ACTIVATION.derivative_with::<M>(v));
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use std::mem::MaybeUninit;

    use super::{Pass, Separate};
    use crate::backend::Activation;

    type CompiledCopy = fn(Activation, Pass, &mut [MaybeUninit<f32>]);

    fn outputs(pass: Pass, write: impl FnOnce(Pass, &mut [MaybeUninit<f32>])) -> Vec<f32> {
        let len = match pass {
            Pass::Value { x } | Pass::AffineValue { x, .. } | Pass::Vjp { x, .. } => x.len(),
        };
        let mut out = vec![MaybeUninit::uninit(); len];
        write(pass, &mut out);
        // SAFETY: every pass writes each element of `out`.
        out.into_iter().map(|o| unsafe { o.assume_init() }).collect()
    }

    /// The copies compiled for this CPU (fused steps, wider vectors) round to the baseline
    /// build's f32 results but for the rarest ties, by one ulp at most.
    #[test]
    fn every_compiled_copy_gives_the_baseline_results() {
        let x: Vec<f32> = (-40_000..40_000).map(|i| i as f32 * 7.3e-4 + 1e-6).collect();
        let grad: Vec<f32> = x.iter().map(|v| 1.0 - v * 0.01).collect();
        let mut copies: Vec<(&str, CompiledCopy)> = vec![("dispatched", super::run)];
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has AVX2 and FMA, checked just above.
            copies.push(("avx2+fma", |a, p, o| unsafe { super::run_avx2_fma(a, p, o) }));
        }
        let activations = [
            Activation::Silu,
            Activation::Gelu,
            Activation::GeluTanh,
            Activation::Sigmoid,
            Activation::Tanh,
        ];
        for activation in activations {
            let passes = [
                Pass::Value { x: &x },
                Pass::AffineValue {
                    x: &x,
                    scale: 0.75,
                    shift: -0.5,
                },
                Pass::Vjp { x: &x, grad: &grad },
            ];
            for pass in passes {
                let baseline = outputs(pass, |p, o| super::run_inline::<Separate>(activation, p, o));
                for (name, copy) in &copies {
                    let ours = outputs(pass, |p, o| copy(activation, p, o));
                    let differing = baseline
                        .iter()
                        .zip(&ours)
                        .filter(|(b, o)| b.to_bits() != o.to_bits())
                        .count();
                    let worst_ulps = baseline
                        .iter()
                        .zip(&ours)
                        .map(|(b, o)| (b.to_bits() as i64 - o.to_bits() as i64).abs())
                        .max();
                    assert!(
                        differing <= x.len() / 10_000 && worst_ulps <= Some(1),
                        "{activation:?} {name}: {differing} of {} differ, by up to {worst_ulps:?} ulp",
                        x.len()
                    );
                }
            }
        }
    }
}
