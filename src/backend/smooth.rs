//! The smooth activations' transcendental parts in f64, written without branches so that a loop
//! over a tensor's elements vectorises (`std`'s `exp` and `tanh` are calls into libm, one
//! element at a time: SiLU's value and derivative took half of an EfficientNet-B0 SmoothGrad).
//! Each is accurate to a few f64 ulp where its f32 result is not 0 or saturated, so the f32
//! results [`super::Activation`] rounds them to are those of libm's in all but the rarest
//! rounding ties.
//!
//! Their polynomials' steps go through a [`MulAdd`]: fused where the caller's loop is compiled
//! for FMA, separate elsewhere.

/// How a polynomial's steps sum * v + c are computed, chosen by the loop that inlines them.
pub trait MulAdd {
    fn mul_add(a: f64, b: f64, c: f64) -> f64;
}

/// One rounding, one instruction: for loops compiled with FMA (`#[target_feature]`).
#[cfg(any(target_arch = "x86_64", test))]
pub enum Fused {}

/// A product, then a sum: for builds without FMA, where `f64::mul_add` would be a libm call per
/// element (and in WebAssembly, its software emulation).
pub enum Separate {}

#[cfg(any(target_arch = "x86_64", test))]
impl MulAdd for Fused {
    #[inline(always)]
    fn mul_add(a: f64, b: f64, c: f64) -> f64 {
        a.mul_add(b, c)
    }
}

impl MulAdd for Separate {
    #[inline(always)]
    fn mul_add(a: f64, b: f64, c: f64) -> f64 {
        a * b + c
    }
}

/// Σ coefficients[i] v^(n - 1 - i), highest degree first, as four interleaved Horner chains:
/// p(v) = p0(v⁴) + v p1(v⁴) + v² p2(v⁴) + v³ p3(v⁴), pk holding the terms of degree k mod 4.
/// A vector of lanes waits on each step's latency; in one chain, GELU's degree-20 erfcx after
/// exp's degree-12 series made 33 dependent steps per element, which the loop could not hide.
#[inline(always)]
fn polynomial<M: MulAdd>(coefficients: &[f64], v: f64) -> f64 {
    let v2 = v * v;
    let v4 = v2 * v2;
    let chain = |k: usize| {
        let lowest_first = coefficients.iter().rev().skip(k).step_by(4);
        lowest_first.rev().fold(0.0, |sum, &c| M::mul_add(sum, v4, c))
    };
    M::mul_add(M::mul_add(chain(3), v, chain(2)), v2, M::mul_add(chain(1), v, chain(0)))
}

/// log2(e), and ln(2) in two parts (Cody and Waite): `LN2_HI` has 21 trailing zero bits, so
/// n * LN2_HI is exact for the |n| <= 1010 that [`exp`] meets.
const LOG2_E: f64 = std::f64::consts::LOG2_E;
const LN2_HI: f64 = f64::from_bits(0x3fe6_2e42_fee0_0000);
const LN2_LO: f64 = f64::from_bits(0x3dea_39ef_3579_3c76);

/// 1.5 * 2^52: added to a float below 2^51 in magnitude, it rounds it to the nearest integer,
/// which then sits in the low bits of the sum's mantissa.
const ROUNDER: f64 = 6_755_399_441_055_744.0;

/// Past ±`EXP_LIMIT`, e^x is taken as 0 or +∞, as libm's becomes from -745 and 709.8; within
/// it, the scale 2^n stays a normal number. No f32 an activation makes of e^x (1 / (1 + e^x),
/// x e^(-x²/2), ...) tells the two apart.
const EXP_LIMIT: f64 = 700.0;

/// e^x, to a few ulp; 0 and +∞ past ±[`EXP_LIMIT`]; NaN stays NaN.
#[inline(always)]
pub fn exp<M: MulAdd>(x: f64) -> f64 {
    let (e_r_minus_1, scale) = exp_parts::<M>(x);
    saturated(x, scale * (e_r_minus_1 + 1.0), 0.0)
}

/// e^x - 1, without the cancellation of `exp(x) - 1` near 0.
#[inline(always)]
fn exp_minus_1<M: MulAdd>(x: f64) -> f64 {
    let (e_r_minus_1, scale) = exp_parts::<M>(x);
    // With n = 0 (|x| < ln(2) / 2) the scale is 1 and the sum is e^r - 1 itself.
    saturated(x, scale * e_r_minus_1 + (scale - 1.0), -1.0)
}

/// `value` within ±[`EXP_LIMIT`]; below it `below_limit` (0 for e^x, -1 for e^x - 1), above +∞.
#[inline(always)]
fn saturated(x: f64, value: f64, below_limit: f64) -> f64 {
    if x < -EXP_LIMIT {
        below_limit
    } else if x > EXP_LIMIT {
        f64::INFINITY
    } else {
        value
    }
}

/// e^x as 2^n e^r: (e^r - 1, 2^n), with x = n ln 2 + r, |r| <= ln(2) / 2, x clamped to
/// ±[`EXP_LIMIT`] first.
#[inline(always)]
fn exp_parts<M: MulAdd>(x: f64) -> (f64, f64) {
    // `clamp` keeps NaN (`max` and `min` would turn it into a bound).
    let x = x.clamp(-EXP_LIMIT, EXP_LIMIT);
    let shifted = x * LOG2_E + ROUNDER;
    let n = shifted - ROUNDER;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    // e^r - 1 = r (1 + r/2! + ... + r^12/13!): the next term is under 4e-18 for |r| <= 0.347.
    // 1/13!, 1/12!, ..., 1/2!, 1: highest degree first.
    const INVERSE_FACTORIALS: [f64; 13] = {
        let mut c = [1.0; 13];
        let mut k = 11;
        loop {
            c[k] = c[k + 1] / (13 - k) as f64;
            if k == 0 {
                break c;
            }
            k -= 1;
        }
    };
    let e_r_minus_1 = r * polynomial::<M>(&INVERSE_FACTORIALS, r);
    // 2^n from n's bits in `shifted`: its mantissa holds 2^51 + n exactly.
    let n_bits = shifted.to_bits().wrapping_sub(ROUNDER.to_bits());
    (e_r_minus_1, f64::from_bits(n_bits.wrapping_add(1023) << 52))
}

/// 1 / (1 + e^-x).
#[inline(always)]
pub fn sigmoid<M: MulAdd>(x: f64) -> f64 {
    1.0 / (1.0 + exp::<M>(-x))
}

/// From here on tanh(x) rounds to ±1 (1 - tanh(20) = 8e-18).
const TANH_SATURATES: f64 = 20.0;

/// tanh(x) = (e^2x - 1) / (e^2x + 1), to a few ulp; odd, so -0 stays -0.
#[inline(always)]
pub fn tanh<M: MulAdd>(x: f64) -> f64 {
    let magnitude = x.abs();
    let e = exp_minus_1::<M>(2.0 * magnitude);
    // Saturated before e^2x overflows (∞ / ∞).
    let tanh_magnitude = if magnitude > TANH_SATURATES { 1.0 } else { e / (e + 2.0) };
    tanh_magnitude.copysign(x)
}

/// erfcx(z) = e^(z²) erfc(z) is evaluated for 0 <= z <= this (x down to -14.57): beyond, Φ(x)
/// is under 3e-48, so x Φ(x) and every other f32 GELU makes of it rounds to zero whatever
/// erfcx's argument, and clamping it there keeps Φ that small.
const ERFCX_UP_TO: f64 = 10.3;

/// erfcx(z) for 0 <= z <= [`ERFCX_UP_TO`] as a polynomial, highest degree first, in
/// y = [`ERFCX_T_SCALE`] t + [`ERFCX_T_SHIFT`] with t = 1 / (1 + 0.3 z) (so y spans [-1, 1]):
/// fitted to mpmath's erfcx by Chebyshev interpolation (`mpmath.chebyfit`, 50 digits), within
/// 1.4e-15; `scripts/fit_erfcx.py` prints them again. One polynomial over the whole range, so
/// that a vector of lanes evaluates one formula instead of two and a select.
const ERFCX: [f64; 21] = [
    -9.36639412511291e-12,
    2.609208746725983e-11,
    1.2324962177460098e-10,
    -5.328130615459767e-10,
    -1.042496599107985e-09,
    7.838934136259597e-09,
    8.656746184056682e-09,
    -1.1038534694279332e-07,
    -1.1888660093582039e-07,
    1.6082586173308753e-06,
    3.220933230960822e-06,
    -2.243698402781714e-05,
    -0.00010659539206803913,
    0.00010901653615223734,
    0.0027928597854833125,
    0.014534889117557367,
    0.04794987371183676,
    0.11713785570833132,
    0.2237203859912104,
    0.3409786215171197,
    0.2529009150281583,
];
/// t = 1 / (1 + 0.3 z) spans [1 / 4.09, 1] on [0, [`ERFCX_UP_TO`]].
const ERFCX_T_SCALE: f64 = 8.18 / 3.09;
const ERFCX_T_SHIFT: f64 = -5.09 / 3.09;

/// e^(-x²/2), to a few ulp: x² is split into a sum of two floats (Dekker), since its rounding
/// error alone, magnified by the exponent, would cost up to 300 ulp in the tail.
#[inline(always)]
pub fn gaussian<M: MulAdd>(x: f64) -> f64 {
    // Past |x| = 40, e^(-x²/2) is 0 anyway; the bound keeps the split from overflowing.
    let x = x.clamp(-40.0, 40.0);
    let split = x * 134_217_729.0; // 2^27 + 1
    let high = split - (split - x);
    let low = x - high;
    // x² = high² (exact: 26 bits squared) + the rest, and e^(-rest/2) by its series: rest/2
    // is under 1.2e-5, so the next term is under 4e-21.
    let half_rest = 0.5 * low * (2.0 * high + low);
    let rest_factor = 1.0 - half_rest * (1.0 - half_rest * (0.5 - half_rest / 6.0));
    exp::<M>(-0.5 * (high * high)) * rest_factor
}

/// Φ(x), the standard normal CDF, 0.5 erfc(-x / √2), to a few ulp for x >= -14.57 (its tail
/// too, where 0.5 (1 + erf(x / √2)) cancels); below, some value under 3e-48 (see
/// [`ERFCX_UP_TO`]).
#[inline(always)]
pub fn normal_cdf<M: MulAdd>(x: f64) -> f64 {
    let z = x * std::f64::consts::FRAC_1_SQRT_2;
    // `min` takes 10.3 for a NaN, whose NaN then comes through `gaussian`.
    let t = 1.0 / (1.0 + 0.3 * z.abs().min(ERFCX_UP_TO));
    let y = t * ERFCX_T_SCALE + ERFCX_T_SHIFT;
    // e^(-z²) = e^(-x²/2).
    let half_erfc = 0.5 * gaussian::<M>(x) * polynomial::<M>(&ERFCX, y);
    if z < 0.0 {
        half_erfc
    } else {
        1.0 - half_erfc
    }
}

#[cfg(test)]
mod tests {
    /// Against libm over the range the activations meet, in f64 ulp, and where f32 results
    /// saturate: 0, 1, infinities, NaN and signed zeros.
    fn exp_sigmoid_tanh_and_normal_cdf_are_accurate<M: super::MulAdd>() {
        let ulps = |ours: f64, libm: f64| ((ours - libm) / (libm.abs() * f64::EPSILON)).abs();
        let mut worst = [0f64; 3];
        for i in -199_000..=199_000 {
            let x = i as f64 * 1e-3 + 1.234_567e-7;
            worst[0] = worst[0].max(ulps(super::exp::<M>(x), x.exp()));
            worst[1] = worst[1].max(ulps(super::sigmoid::<M>(x), 1.0 / (1.0 + (-x).exp())));
            if x.abs() < 20.0 {
                worst[2] = worst[2].max(ulps(super::tanh::<M>(x), x.tanh()));
            }
        }
        for x in [1e-300, 1e-20, 1e-8, 3e-4, 9.99e-4, 1e-3, 1.01e-3, 0.01] {
            worst[2] = worst[2].max(ulps(super::tanh::<M>(x), x.tanh()));
            worst[2] = worst[2].max(ulps(super::tanh::<M>(-x), (-x).tanh()));
        }
        assert!(worst.iter().all(|&w| w < 4.0), "worst errors in f64 ulp: {worst:?}");
        // Φ against candle's 0.5 erfc(-x / √2) (after Boost) where rounding x / √2 does not
        // move it (it errs by x² ulp), and in the tail against mpmath's `ncdf` (40 digits).
        let mut worst_cdf = 0f64;
        for i in -2_000..=9_000 {
            let x = i as f64 * 1e-3 + 1.234_567e-7;
            let reference = 0.5 * candle_core::cpu::erf::erfc_f64(-x * std::f64::consts::FRAC_1_SQRT_2);
            worst_cdf = worst_cdf.max(ulps(super::normal_cdf::<M>(x), reference));
        }
        let tail = [
            (-14.55, 2.920_152_528_100_892e-48),
            (-14.5, 6.057_494_764_415_221e-48),
            (-12.25, 8.399_796_063_633_417e-35),
            (-10.5, 4.319_006_317_809_230_3e-26),
            (-9.75, 9.223_413_524_939_418e-23),
            (-8.0, 6.220_960_574_271_784e-16),
            (-7.25, 2.083_858_158_672_069_4e-13),
            (-6.0, 9.865_876_450_376_98e-10),
            (-5.5, 1.898_956_246_588_772e-8),
            (-4.88, 5.304_292_029_750_943e-7),
            (-4.0, 3.167_124_183_311_992_4e-5),
            (-3.3, 0.000_483_424_142_383_777_5),
            (-2.75, 0.002_979_763_235_054_557),
            (-2.25, 0.012_224_472_655_044_703),
            (-1.75, 0.040_059_156_863_817_09),
            (-1.45, 0.073_529_259_609_648_36),
            (-0.9, 0.184_060_125_346_759_5),
            (-0.3, 0.382_088_577_811_047_4),
            (1.45, 0.926_470_740_390_351_6),
            (8.0, 0.999_999_999_999_999_3),
        ];
        for (x, reference) in tail {
            worst_cdf = worst_cdf.max(ulps(super::normal_cdf::<M>(x), reference));
        }
        // Past x = -14.57 erfcx's argument is held at 10.3: Φ stays under 3e-48 and positive,
        // so GELU's f32 values and derivatives there round to zero as they should.
        for x in [-14.6, -20.0, -37.0] {
            let cdf = super::normal_cdf::<M>(x);
            assert!(cdf > 0.0 && cdf < 3e-48, "Φ({x}) = {cdf}");
        }
        assert!(worst_cdf < 8.0, "Φ's worst error: {worst_cdf} f64 ulp");
        assert_eq!(
            (super::normal_cdf::<M>(-40.0), super::normal_cdf::<M>(f64::NEG_INFINITY)),
            (0.0, 0.0)
        );
        assert_eq!(
            (super::normal_cdf::<M>(10.0), super::normal_cdf::<M>(f64::INFINITY)),
            (1.0, 1.0)
        );
        assert!(super::normal_cdf::<M>(f64::NAN).is_nan());
        assert_eq!((super::exp::<M>(-1e30), super::exp::<M>(1e30)), (0.0, f64::INFINITY));
        assert_eq!(
            (super::exp::<M>(f64::NEG_INFINITY), super::exp::<M>(f64::INFINITY)),
            (0.0, f64::INFINITY)
        );
        assert!(
            super::exp::<M>(f64::NAN).is_nan()
                && super::sigmoid::<M>(f64::NAN).is_nan()
                && super::tanh::<M>(f64::NAN).is_nan()
        );
        assert_eq!(
            (super::sigmoid::<M>(-1e30) as f32, super::sigmoid::<M>(1e30) as f32),
            (0.0, 1.0)
        );
        assert_eq!(
            (
                super::sigmoid::<M>(f64::NEG_INFINITY),
                super::sigmoid::<M>(f64::INFINITY)
            ),
            (0.0, 1.0)
        );
        assert_eq!(
            (super::tanh::<M>(f64::INFINITY), super::tanh::<M>(f64::NEG_INFINITY)),
            (1.0, -1.0)
        );
        assert!(super::tanh::<M>(-0.0).is_sign_negative() && super::tanh::<M>(0.0).is_sign_positive());
    }

    #[test]
    fn separate_steps_match_libm() {
        exp_sigmoid_tanh_and_normal_cdf_are_accurate::<super::Separate>();
    }

    /// Fused steps on any CPU: where it has no FMA, `mul_add` is libm's `fma`, which rounds the same.
    #[test]
    fn fused_steps_match_libm() {
        exp_sigmoid_tanh_and_normal_cdf_are_accurate::<super::Fused>();
    }
}
