//! The smooth activations' transcendental parts in f64, written without branches so that a loop
//! over a tensor's elements vectorises (`std`'s `exp` and `tanh` are calls into libm, one
//! element at a time: SiLU's value and derivative took half of an EfficientNet-B0 SmoothGrad).
//! Each is accurate to a few f64 ulp where its f32 result is not 0 or saturated, so the f32
//! results [`super::Activation`] rounds them to are those of libm's in all but the rarest
//! rounding ties.

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
pub fn exp(x: f64) -> f64 {
    let (e_r_minus_1, scale) = exp_parts(x);
    saturated(x, scale * (e_r_minus_1 + 1.0), 0.0)
}

/// e^x - 1, without the cancellation of `exp(x) - 1` near 0.
#[inline(always)]
fn exp_minus_1(x: f64) -> f64 {
    let (e_r_minus_1, scale) = exp_parts(x);
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

/// From here on tanh(x) rounds to ±1 (1 - tanh(20) = 8e-18).
const TANH_SATURATES: f64 = 20.0;

/// tanh(x) = (e^2x - 1) / (e^2x + 1), to a few ulp; odd, so -0 stays -0.
#[inline(always)]
pub fn tanh(x: f64) -> f64 {
    let magnitude = x.abs();
    let e = exp_minus_1(2.0 * magnitude);
    // Saturated before e^2x overflows (∞ / ∞).
    let tanh_magnitude = if magnitude > TANH_SATURATES { 1.0 } else { e / (e + 2.0) };
    tanh_magnitude.copysign(x)
}

/// Below this |z|, erf(z) takes its Taylor series; above, erfc(z) = e^(-z²) erfcx(z).
const ERF_SERIES_BELOW: f64 = 1.0;

/// erf(z) / z = 2/√π Σ (-1)^k z^2k / (k! (2k + 1)), k = 0..=20, highest first: the next term
/// is under 5e-22 for |z| < 1.
const ERF_SERIES: [f64; 21] = {
    let mut c = [0.0; 21];
    let mut term = std::f64::consts::FRAC_2_SQRT_PI;
    let mut k = 0;
    while k < 21 {
        c[20 - k] = term / (2 * k + 1) as f64;
        term = -term / (k + 1) as f64;
        k += 1;
    }
    c
};

/// erfcx(z) = e^(z²) erfc(z) for 1 <= z <= 27 (beyond, e^(-z²) is 0) as a polynomial, highest
/// degree first, in y = (56 t - 15) / 13 with t = 1 / (1 + z) (so y spans [-1, 1]): fitted to
/// mpmath's erfcx by Chebyshev interpolation (`mpmath.chebyfit`, 50 digits), within 1.3e-15;
/// `scripts/fit_erfcx.py` prints them again.
const ERFCX: [f64; 23] = [
    -6.268_554_187_608_541e-11,
    1.121_421_816_410_625_8e-10,
    3.441_840_363_570_823_7e-10,
    -1.115_552_087_355_886_5e-9,
    4.968_242_206_437_292e-10,
    3.217_957_016_740_960_4e-9,
    -1.012_772_087_895_311_9e-8,
    1.226_411_428_403_470_1e-8,
    2.119_349_153_315_168e-8,
    -1.298_343_299_899_535_6e-7,
    2.236_673_245_519_647_6e-7,
    2.238_463_200_553_899e-7,
    -2.079_982_197_042_412_7e-6,
    3.781_684_355_861_633e-6,
    6.322_060_398_936_178e-6,
    -4.676_368_523_514_59e-5,
    5.069_359_335_237_893e-5,
    0.000_376_854_628_822_409_76,
    -0.001_341_286_214_803_998_3,
    -0.003_738_991_780_977_551_4,
    0.030_797_134_094_721_203,
    0.206_755_994_745_076,
    0.194_721_573_010_224_58,
];

/// e^(-x²/2), to a few ulp: x² is split into a sum of two floats (Dekker), since its rounding
/// error alone, magnified by the exponent, would cost up to 300 ulp in the tail.
#[inline(always)]
pub fn gaussian(x: f64) -> f64 {
    // Past |x| = 40, e^(-x²/2) is 0 anyway; the bound keeps the split from overflowing.
    let x = x.clamp(-40.0, 40.0);
    let split = x * 134_217_729.0; // 2^27 + 1
    let high = split - (split - x);
    let low = x - high;
    // x² = high² (exact: 26 bits squared) + the rest, and e^(-rest/2) by its series: rest/2
    // is under 1.2e-5, so the next term is under 4e-21.
    let half_rest = 0.5 * low * (2.0 * high + low);
    let rest_factor = 1.0 - half_rest * (1.0 - half_rest * (0.5 - half_rest / 6.0));
    exp(-0.5 * (high * high)) * rest_factor
}

/// Φ(x), the standard normal CDF, 0.5 erfc(-x / √2), to a few ulp over the whole range (its
/// tail too, where 0.5 (1 + erf(x / √2)) cancels).
#[inline(always)]
pub fn normal_cdf(x: f64) -> f64 {
    let z = x * std::f64::consts::FRAC_1_SQRT_2;
    let magnitude = z.abs();
    let horner = |coefficients: &[f64], v: f64| coefficients.iter().fold(0.0, |sum, &c| sum * v + c);
    let from_series = 0.5 + 0.5 * z * horner(&ERF_SERIES, z * z);
    let t = 1.0 / (1.0 + magnitude.min(27.0));
    // e^(-z²) = e^(-x²/2).
    let erfc = gaussian(x) * horner(&ERFCX, (56.0 * t - 15.0) / 13.0);
    let from_tail = if z < 0.0 { 0.5 * erfc } else { 1.0 - 0.5 * erfc };
    if magnitude < ERF_SERIES_BELOW {
        from_series
    } else {
        from_tail
    }
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
        // Φ against candle's 0.5 erfc(-x / √2) (after Boost) where rounding x / √2 does not
        // move it (it errs by x² ulp), and in the tail against mpmath's `ncdf` (40 digits).
        let mut worst_cdf = 0f64;
        for i in -2_000..=9_000 {
            let x = i as f64 * 1e-3 + 1.234_567e-7;
            let reference = 0.5 * candle_core::cpu::erf::erfc_f64(-x * std::f64::consts::FRAC_1_SQRT_2);
            worst_cdf = worst_cdf.max(ulps(super::normal_cdf(x), reference));
        }
        let tail = [
            (-37.0, 5.725571222524577e-300),
            (-30.5, 1.3029379131780763e-204),
            (-26.0, 2.4760633155033892e-149),
            (-20.125, 2.228860638310343e-90),
            (-14.5, 6.057494764415221e-48),
            (-9.75, 9.223413524939418e-23),
            (-6.0, 9.86587645037698e-10),
            (-4.88, 5.304292029750943e-07),
            (-4.0, 3.1671241833119924e-05),
            (-2.75, 0.002979763235054557),
            (-3.3, 0.0004834241423837775),
            (-1.45, 0.07352925960964836),
            (1.45, 0.9264707403903516),
            (8.0, 0.9999999999999993),
        ];
        for (x, reference) in tail {
            worst_cdf = worst_cdf.max(ulps(super::normal_cdf(x), reference));
        }
        assert!(worst_cdf < 8.0, "Φ's worst error: {worst_cdf} f64 ulp");
        assert_eq!(
            (super::normal_cdf(-40.0), super::normal_cdf(f64::NEG_INFINITY)),
            (0.0, 0.0)
        );
        assert_eq!((super::normal_cdf(10.0), super::normal_cdf(f64::INFINITY)), (1.0, 1.0));
        assert!(super::normal_cdf(f64::NAN).is_nan());
        assert_eq!((super::exp(-1e30), super::exp(1e30)), (0.0, f64::INFINITY));
        assert_eq!(
            (super::exp(f64::NEG_INFINITY), super::exp(f64::INFINITY)),
            (0.0, f64::INFINITY)
        );
        assert!(super::exp(f64::NAN).is_nan() && super::sigmoid(f64::NAN).is_nan() && super::tanh(f64::NAN).is_nan());
        assert_eq!((super::sigmoid(-1e30) as f32, super::sigmoid(1e30) as f32), (0.0, 1.0));
        assert_eq!(
            (super::sigmoid(f64::NEG_INFINITY), super::sigmoid(f64::INFINITY)),
            (0.0, 1.0)
        );
        assert_eq!(
            (super::tanh(f64::INFINITY), super::tanh(f64::NEG_INFINITY)),
            (1.0, -1.0)
        );
        assert!(super::tanh(-0.0).is_sign_negative() && super::tanh(0.0).is_sign_positive());
    }
}
