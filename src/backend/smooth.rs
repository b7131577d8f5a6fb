//! The smooth activations' transcendental parts in f64, written without branches so that a loop
//! over a tensor's elements vectorises (`std`'s `exp` and `tanh` are calls into libm, one
//! element at a time: SiLU's value and derivative took half of an EfficientNet-B0 SmoothGrad).
//! Each is accurate to a few f64 ulp where its f32 result is not 0 or saturated, so the f32
//! results [`super::Activation`] rounds them to are those of libm's in all but the rarest
//! rounding ties.

/// log2(e), and ln(2) in two parts (Cody and Waite): `LN2_HI` has 32 trailing zero bits, so
/// n * LN2_HI is exact for the |n| <= 289 that [`exp`] meets.
const LOG2_E: f64 = std::f64::consts::LOG2_E;
const LN2_HI: f64 = f64::from_bits(0x3fe6_2e42_fee0_0000);
const LN2_LO: f64 = f64::from_bits(0x3dea_39ef_3579_3c76);

/// 1.5 * 2^52: added to a float below 2^51 in magnitude, it rounds it to the nearest integer,
/// which then sits in the low bits of the sum's mantissa.
const ROUNDER: f64 = 6_755_399_441_055_744.0;

/// Arguments are clamped to ±`EXP_LIMIT`: e^200 (7e86) is past every f32 the activations
/// make of it (they take 1 / (1 + e^x), x e^(-x²/2), ...: 0, 1 or saturated either way), and it
/// keeps the scale 2^n a normal number.
const EXP_LIMIT: f64 = 200.0;

/// e^x, to a few ulp, for x clamped to ±[`EXP_LIMIT`]; NaN stays NaN.
#[inline(always)]
pub fn exp(x: f64) -> f64 {
    let (e_r_minus_1, scale) = exp_parts(x);
    scale * (e_r_minus_1 + 1.0)
}

/// e^x - 1, without the cancellation of `exp(x) - 1` near 0.
#[inline(always)]
fn exp_minus_1(x: f64) -> f64 {
    let (e_r_minus_1, scale) = exp_parts(x);
    // With n = 0 (|x| < ln(2) / 2) the scale is 1 and the sum is e^r - 1 itself.
    scale * e_r_minus_1 + (scale - 1.0)
}

/// e^x as 2^n e^r: (e^r - 1, 2^n), with x = n ln 2 + r, |r| <= ln(2) / 2, x clamped to
/// ±[`EXP_LIMIT`] first.
#[inline(always)]
fn exp_parts(x: f64) -> (f64, f64) {
    // `clamp` keeps NaN (`max` and `min` would turn it into a bound).
    let x = x.clamp(-EXP_LIMIT, EXP_LIMIT);
    let shifted = x * LOG2_E + ROUNDER;
    let n = shifted - ROUNDER;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    // e^r - 1 = r (1 + r/2! + ... + r^12/13!): the next term is under 4e-18 for |r| <= 0.347.
    const INVERSE_FACTORIALS: [f64; 13] = {
        let mut c = [1.0; 13];
        let mut k = 1;
        while k < 13 {
            c[k] = c[k - 1] / (k + 1) as f64;
            k += 1;
        }
        c
    };
    let e_r_minus_1 = r * INVERSE_FACTORIALS.iter().rev().fold(0.0, |sum, &c| sum * r + c);
    // 2^n from n's bits in `shifted`: its mantissa holds 2^51 + n exactly.
    let n_bits = shifted.to_bits().wrapping_sub(ROUNDER.to_bits());
    (e_r_minus_1, f64::from_bits(n_bits.wrapping_add(1023) << 52))
}

/// 1 / (1 + e^-x).
#[inline(always)]
pub fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + exp(-x))
}

/// tanh(x) = (e^2x - 1) / (e^2x + 1), to a few ulp; odd, so -0 stays -0.
#[inline(always)]
pub fn tanh(x: f64) -> f64 {
    let e = exp_minus_1(2.0 * x.abs());
    (e / (e + 2.0)).copysign(x)
}

#[cfg(test)]
mod tests {
    /// Against libm over the range the activations meet, in f64 ulp, and where f32 results
    /// saturate: 0, 1, infinities, NaN and signed zeros.
    #[test]
    fn exp_sigmoid_and_tanh_match_libm() {
        let ulps = |ours: f64, libm: f64| ((ours - libm) / (libm.abs() * f64::EPSILON)).abs();
        let mut worst = [0f64; 3];
        for i in -199_000..=199_000 {
            let x = i as f64 * 1e-3 + 1.234_567e-7;
            worst[0] = worst[0].max(ulps(super::exp(x), x.exp()));
            worst[1] = worst[1].max(ulps(super::sigmoid(x), 1.0 / (1.0 + (-x).exp())));
            if x.abs() < 20.0 {
                worst[2] = worst[2].max(ulps(super::tanh(x), x.tanh()));
            }
        }
        for x in [1e-300, 1e-20, 1e-8, 3e-4, 9.99e-4, 1e-3, 1.01e-3, 0.01] {
            worst[2] = worst[2].max(ulps(super::tanh(x), x.tanh()));
            worst[2] = worst[2].max(ulps(super::tanh(-x), (-x).tanh()));
        }
        assert!(worst.iter().all(|&w| w < 4.0), "worst errors in f64 ulp: {worst:?}");
        // Clamped at ±200: tiny and huge, never 0 or infinite.
        assert!(super::exp(-1e30) > 0.0 && super::exp(-1e30) < 1e-86 && super::exp(1e30) > 1e86);
        assert!(super::exp(1e30).is_finite());
        assert!(super::exp(f64::NAN).is_nan() && super::sigmoid(f64::NAN).is_nan() && super::tanh(f64::NAN).is_nan());
        assert_eq!((super::sigmoid(-1e30) as f32, super::sigmoid(1e30) as f32), (0.0, 1.0));
        assert_eq!(
            (super::sigmoid(f64::NEG_INFINITY), super::sigmoid(f64::INFINITY)),
            (super::sigmoid(-200.0), 1.0)
        );
        assert_eq!(
            (super::tanh(f64::INFINITY), super::tanh(f64::NEG_INFINITY)),
            (1.0, -1.0)
        );
        assert!(super::tanh(-0.0).is_sign_negative() && super::tanh(0.0).is_sign_positive());
    }
}
