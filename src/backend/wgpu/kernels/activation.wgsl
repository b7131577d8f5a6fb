// The activations and their derivatives, by the codes of `activation_code` in elementwise.rs.
// Same formulas as `Activation::value` / `derivative` (PyTorch's, kinks included), in f32.

fn sigmoid(v: f32) -> f32 {
    return 1.0 / (1.0 + exp(-v));
}

// Abramowitz & Stegun 7.1.26: |error| < 1.5e-7, below f32's resolution of GELU's values.
fn erf_approx(v: f32) -> f32 {
    let z = abs(v);
    let t = 1.0 / (1.0 + 0.3275911 * z);
    let poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))));
    let r = 1.0 - poly * exp(-z * z);
    return select(-r, r, v >= 0.0);
}

fn normal_cdf(v: f32) -> f32 {
    return 0.5 * (1.0 + erf_approx(v * 0.70710678118654752));
}

// Drivers' tanh may go through (e^2v - 1) / (e^2v + 1), which overflows past |v| ~ 44 and
// loses most digits near 0 (lavapipe: 5e-5 relative at 6e-4). Taylor to v^9 below 1/8
// (truncation < 1e-12), else through e^-2|v|, which cannot overflow.
fn tanh_safe(v: f32) -> f32 {
    let a = abs(v);
    if a < 0.125 {
        let s = v * v;
        return v * (1.0 + s * (-1.0 / 3.0 + s * (2.0 / 15.0 + s * (-17.0 / 315.0 + s * (62.0 / 2835.0)))));
    }
    let e = exp(-2.0 * min(a, 15.0));
    let t = (1.0 - e) / (1.0 + e);
    return select(-t, t, v >= 0.0);
}

const GELU_TANH_SCALE: f32 = 0.7978845608028654;
const GELU_TANH_CUBIC: f32 = 0.044715;

fn activate(code: u32, v: f32, slope: f32) -> f32 {
    switch code {
        case 0u: { return max(v, 0.0); }
        case 1u: { return min(max(v, 0.0), 6.0); }
        case 2u: { return select(v * slope, v, v > 0.0); }
        case 3u: { return v * sigmoid(v); }
        case 4u: { return v * normal_cdf(v); }
        case 5u: { return 0.5 * v * (1.0 + tanh_safe(GELU_TANH_SCALE * (v + GELU_TANH_CUBIC * v * v * v))); }
        case 6u: { return sigmoid(v); }
        case 7u: { return tanh_safe(v); }
        case 8u: { return v * min(max(v + 3.0, 0.0), 6.0) / 6.0; }
        default: { return min(max(v + 3.0, 0.0), 6.0) / 6.0; }
    }
}

fn activation_derivative(code: u32, v: f32, slope: f32) -> f32 {
    switch code {
        case 0u: { return select(0.0, 1.0, v > 0.0); }
        case 1u: { return select(0.0, 1.0, v > 0.0 && v < 6.0); }
        case 2u: { return select(slope, 1.0, v > 0.0); }
        case 3u: {
            let s = sigmoid(v);
            return s * (1.0 + v * (1.0 - s));
        }
        case 4u: { return normal_cdf(v) + v * exp(-0.5 * v * v) * 0.3989422804014327; }
        case 5u: {
            let t = tanh_safe(GELU_TANH_SCALE * (v + GELU_TANH_CUBIC * v * v * v));
            let d_inner = GELU_TANH_SCALE * (1.0 + 3.0 * GELU_TANH_CUBIC * v * v);
            return 0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * d_inner;
        }
        case 6u: {
            let s = sigmoid(v);
            return s * (1.0 - s);
        }
        case 7u: {
            let t = tanh_safe(v);
            return 1.0 - t * t;
        }
        case 8u: { return select(select(1.0, v / 3.0 + 0.5, v <= 3.0), 0.0, v < -3.0); }
        default: { return select(0.0, 1.0 / 6.0, v > -3.0 && v < 3.0); }
    }
}
