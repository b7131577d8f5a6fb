//! Every operation of the backend interface (`BackendStorage`, reached through
//! `candle_xai::Tensor`) on every backend compiled in — CPU; wgpu (Mesa's lavapipe where there
//! is no GPU); CUDA with the `cuda` feature — against naive references written here: plain
//! loops over the definitions, float64 accumulation, nothing shared with the kernels.
//!
//! Each test builds its cases and their references once, then runs one generic body per
//! device; a failure names the operation, the case and the device. The input-VJPs are also
//! checked as what they claim to be, adjoints: <grad, f'(x) v> == <f'(x)^T grad, v> on the
//! devices' own results, which catches a transposition whatever the references say.
//!
//! The cases are small, but some cross the kernels' thresholds: wgpu's 64x64 GEMM tiles and
//! 16-deep reduction slices (conv, conv input-VJP per stride phase, matmul), its 256-thread
//! workgroups; the CPU kernels' element-wise chunks (16384) and gemm's K blocking (512) and
//! threading threshold (48*48*256 multiply-adds).

use std::fmt;

use candle_xai::backend::{Activation, Map, PoolWindow, Reduce, StdTerm, WindowBins, WindowGeometry, Zip};
use candle_xai::{Device, Tensor};

/// Tolerances, relative to each reference element's error scale ([`Expected`]): the sum of
/// the absolute values of the terms it adds up. One rounding errs by 2^-24 of it (WGSL's
/// division by up to 2.5 ulp); a sum of K terms by at most K·2^-24 and in practice by about
/// sqrt(K)·2^-24, so 1e-5 holds sums of thousands of terms and still fails any wrong term.
/// Measured on the CPU and lavapipe: sums err by at most 3% of SUM_TOL, single operations
/// by 9% of ROUNDING_TOL.
const ROUNDING_TOL: f64 = 1e-6;
const SUM_TOL: f64 = 1e-5;

// ---------------------------------------------------------------- the harness

/// One element of a reference: its value, and the scale of the rounding error an f32
/// computation of it may make, the sum of the absolute values of the terms it adds up.
/// A scale of zero demands the exact value: copies, selections, masks, sums of nothing.
#[derive(Clone, Copy, Debug, Default)]
struct Expected {
    value: f64,
    scale: f64,
}

impl Expected {
    fn exact(value: f64) -> Self {
        Self { value, scale: 0.0 }
    }

    /// The result of one rounded operation.
    fn rounded(value: f64) -> Self {
        Self {
            value,
            scale: value.abs(),
        }
    }

    fn sum(terms: impl IntoIterator<Item = f64>) -> Self {
        let mut sum = Self::default();
        terms.into_iter().for_each(|t| sum.add(t));
        sum
    }

    fn add(&mut self, term: f64) {
        self.value += term;
        self.scale += term.abs();
    }

    fn divided_by(self, divisor: f64) -> Self {
        Self {
            value: self.value / divisor,
            scale: self.scale / divisor,
        }
    }
}

/// What an operation must return.
struct Reference {
    dims: Vec<usize>,
    data: Vec<Expected>,
}

impl Reference {
    fn zeros(dims: &[usize]) -> Self {
        Self {
            dims: dims.to_vec(),
            data: vec![Expected::default(); dims.iter().product()],
        }
    }

    /// Exactly these elements (data movement: reshape, narrow, cat, readback).
    fn copy(host: &Host) -> Self {
        Self {
            dims: host.dims.clone(),
            data: host.data.iter().map(|&v| Expected::exact(v as f64)).collect(),
        }
    }

    fn elementwise(dims: &[usize], data: impl Iterator<Item = Expected>) -> Self {
        let data: Vec<_> = data.collect();
        assert_eq!(data.len(), dims.iter().product::<usize>());
        Self {
            dims: dims.to_vec(),
            data,
        }
    }
}

/// xorshift64*: seeded inputs without a dependency.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [-1, 1), on a 2^-23 grid.
    fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// An input on the host: the f32 elements every device receives, row-major.
#[derive(Clone, Debug)]
struct Host {
    dims: Vec<usize>,
    data: Vec<f32>,
}

impl Host {
    fn new(dims: &[usize], data: Vec<f32>) -> Self {
        assert_eq!(data.len(), dims.iter().product::<usize>(), "{dims:?}");
        Self {
            dims: dims.to_vec(),
            data,
        }
    }

    fn from_fn(dims: &[usize], mut value: impl FnMut() -> f32) -> Self {
        Self::new(dims, (0..dims.iter().product()).map(|_| value()).collect())
    }

    /// Uniform in [-1, 1).
    fn random(rng: &mut Rng, dims: &[usize]) -> Self {
        Self::from_fn(dims, || rng.uniform())
    }

    fn row_len(&self) -> usize {
        self.dims[1..].iter().product()
    }

    fn rows(&self, start: usize, len: usize) -> Self {
        let row = self.row_len();
        let mut dims = self.dims.clone();
        dims[0] = len;
        Self::new(&dims, self.data[start * row..(start + len) * row].to_vec())
    }

    fn reshaped(&self, dims: &[usize]) -> Self {
        Self::new(dims, self.data.clone())
    }

    fn cat_rows(parts: &[&Host]) -> Self {
        let mut dims = parts[0].dims.clone();
        dims[0] = parts.iter().map(|p| p.dims[0]).sum();
        Self::new(&dims, parts.iter().flat_map(|p| p.data.iter().copied()).collect())
    }
}

/// The products of two vectors' elements, summed: (value, sum of absolute values).
fn dot(a: &[f32], b: &[f32]) -> Expected {
    assert_eq!(a.len(), b.len());
    Expected::sum(a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64))
}

/// The index of the `flat`-th element of a row-major tensor of `dims`.
fn unravel(mut flat: usize, dims: &[usize]) -> Vec<usize> {
    let mut index = vec![0; dims.len()];
    for (i, &d) in dims.iter().enumerate().rev() {
        index[i] = flat % d.max(1);
        flat /= d.max(1);
    }
    index
}

/// One device under test: runs operations, compares them, and names itself in every failure.
struct On {
    device: Device,
}

/// The devices this build can run on: the CPU; CUDA with the `cuda` feature; the wgpu
/// adapter (Mesa's lavapipe where there is no GPU) with the `wgpu` feature. A device that is
/// compiled in but missing fails every test: a suite that skipped it would pass untested.
#[allow(unused_mut)]
fn devices() -> Vec<Device> {
    let mut devices = vec![Device::cpu()];
    #[cfg(feature = "cuda")]
    devices.push(Device::from(
        candle_core::Device::new_cuda(0).expect("built with the cuda feature, but there is no CUDA device"),
    ));
    #[cfg(feature = "wgpu")]
    devices.push(Device::Wgpu(wgpu_device()));
    devices
}

/// One wgpu device for the whole test binary: software Vulkan is slow to open one, and the
/// compiled pipelines are cached per device.
#[cfg(feature = "wgpu")]
fn wgpu_device() -> candle_xai::backend::wgpu::WgpuDevice {
    static DEVICE: std::sync::OnceLock<candle_xai::backend::wgpu::WgpuDevice> = std::sync::OnceLock::new();
    DEVICE
        .get_or_init(|| {
            candle_xai::backend::wgpu::WgpuDevice::new().unwrap_or_else(|e| {
                panic!("built with the wgpu feature, but there is no adapter ({e}); without a GPU install mesa-vulkan-drivers")
            })
        })
        .clone()
}

/// Runs `body` once on every device this build can run on.
fn on_every_device(mut body: impl FnMut(&On)) {
    for device in devices() {
        body(&On { device });
    }
}

impl On {
    fn ok<T>(&self, what: &str, result: candle_xai::Result<T>) -> T {
        result.unwrap_or_else(|e| panic!("{what} on {}: {e}", self.device.describe()))
    }

    /// `host` on this device as a view, rows 1.. of a larger tensor whose other rows are NaN
    /// (what `narrow_rows` gives): a kernel that ignores where its input starts in storage,
    /// or reads past its end, shows.
    fn upload(&self, host: &Host) -> Tensor {
        let Some((&rows, rest)) = host.dims.split_first() else {
            return self.ok("upload", self.device.tensor(&host.data, &[]));
        };
        let row = host.row_len();
        let mut data = vec![f32::NAN; row];
        data.extend_from_slice(&host.data);
        data.extend(std::iter::repeat_n(f32::NAN, row));
        let dims: Vec<usize> = std::iter::once(rows + 2).chain(rest.iter().copied()).collect();
        let whole = self.ok("upload", self.device.tensor(&data, &dims));
        self.ok("upload", whole.narrow_rows(1, rows))
    }

    /// Asserts that `got` is `want` within `tol` of each element's error scale, and returns
    /// its elements for further checks.
    #[track_caller]
    fn check(&self, what: &str, got: candle_xai::Result<Tensor>, want: &Reference, tol: f64) -> Vec<f32> {
        let on = self.device.describe();
        let got = self.ok(what, got);
        assert_eq!(got.dims(), want.dims, "{what} on {on}: shape");
        let values = self.ok(what, got.to_vec());
        assert_eq!(values.len(), want.data.len(), "{what} on {on}: element count");
        for (i, (&v, w)) in values.iter().zip(&want.data).enumerate() {
            let error = (v as f64 - w.value).abs();
            let allowed = tol * w.scale;
            if error.is_nan() || error > allowed {
                let bound = match allowed {
                    0.0 => "exactly".to_string(),
                    _ => format!(
                        "within {allowed:.3e} ({tol:.0e} of its terms' magnitudes, {:.3e})",
                        w.scale
                    ),
                };
                panic!(
                    "{what} on {on}: element {:?} is {v}, expected {} {bound}",
                    unravel(i, &want.dims),
                    w.value
                );
            }
        }
        values
    }

    /// Asserts <grad, jvp> == <vjp, direction>: the VJP is the transpose of the forward's
    /// derivative (`jvp` = f'(x) direction, `vjp` = f'(x)^T grad, all from this device).
    #[track_caller]
    fn check_adjoint(&self, what: &str, (grad, jvp): (&[f32], &[f32]), (vjp, direction): (&[f32], &[f32])) {
        let (forward, backward) = (dot(grad, jvp), dot(vjp, direction));
        let error = (forward.value - backward.value).abs();
        let scale = forward.scale + backward.scale;
        assert!(
            error <= SUM_TOL * scale,
            "{what} on {}: <grad, f'(x) v> = {} but <f'(x)^T grad, v> = {} (error {error:.3e} > {SUM_TOL:.0e} x {scale:.3e})",
            self.device.describe(),
            forward.value,
            backward.value
        );
    }
}

// ---------------------------------------------------------------- element-wise

/// [3, 7, 41, 47]: more elements than two of the CPU kernels' 16384-element chunks, spread
/// over [-8, 8) past ReLU6's kink, starting with the kinks themselves (Hardswish's and
/// Hardsigmoid's at -3 and 3 too) and -0.
fn element_wise_input(rng: &mut Rng) -> Host {
    let mut x = Host::from_fn(&[3, 7, 41, 47], || rng.uniform() * 8.0);
    let kinks = [0.0, -0.0, 6.0, -6.0, 3.0, -3.0, -2.0, 1.0, -1.0];
    x.data[..kinks.len()].copy_from_slice(&kinks);
    x
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

fn normal_cdf(x: f64) -> f64 {
    0.5 * (1.0 + candle_core::cpu::erf::erf_f64(x / 2f64.sqrt()))
}

fn normal_density(x: f64) -> f64 {
    (-x * x / 2.0).exp() / (2.0 * std::f64::consts::PI).sqrt()
}

/// GELU's tanh form: 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3).
fn gelu_tanh_inner(x: f64) -> (f64, f64) {
    let c = (2.0 / std::f64::consts::PI).sqrt();
    (c * (x + 0.044715 * x.powi(3)), c * (1.0 + 3.0 * 0.044715 * x * x))
}

/// A transcendental function's value: the kernels' exp, tanh and erf err by a few ulp of
/// their argument's size (WGSL allows exp 3 + 2|x| ulp; the shaders' erf errs by 1.5e-7), so
/// the error scale counts |x| next to the value; 8x ROUNDING_TOL of that still fails any
/// wrong formula by orders of magnitude.
fn smooth(value: f64, x: f64) -> Expected {
    Expected {
        value,
        scale: 8.0 * (value.abs() + 0.1 * x.abs()),
    }
}

fn activation_value(activation: Activation, x: f64) -> Expected {
    match activation {
        Activation::Relu => Expected::exact(x.max(0.0)),
        Activation::Relu6 => Expected::exact(x.clamp(0.0, 6.0)),
        Activation::LeakyRelu { negative_slope } if x <= 0.0 => Expected::rounded(x * negative_slope as f64),
        Activation::LeakyRelu { .. } => Expected::exact(x),
        Activation::Silu => smooth(x * sigmoid(x), x),
        Activation::Gelu => smooth(x * normal_cdf(x), x),
        Activation::GeluTanh => smooth(0.5 * x * (1.0 + gelu_tanh_inner(x).0.tanh()), x),
        Activation::Sigmoid => smooth(sigmoid(x), x),
        Activation::Tanh => smooth(x.tanh(), x),
        Activation::Hardswish => smooth(x * (x + 3.0).clamp(0.0, 6.0) / 6.0, x),
        Activation::Hardsigmoid => smooth((x + 3.0).clamp(0.0, 6.0) / 6.0, x),
    }
}

/// PyTorch's derivatives at the kinks: ReLU's is 0 at 0, hardtanh's 0 at 0 and 6, LeakyReLU's
/// the slope at 0, Hardswish's -1/2 at -3 and 3/2 at 3, Hardsigmoid's 0 at -3 and 3.
fn activation_derivative(activation: Activation, x: f64) -> f64 {
    match activation {
        Activation::Relu => (x > 0.0) as u8 as f64,
        Activation::Relu6 => (x > 0.0 && x < 6.0) as u8 as f64,
        Activation::LeakyRelu { negative_slope } => {
            if x > 0.0 {
                1.0
            } else {
                negative_slope as f64
            }
        }
        Activation::Silu => sigmoid(x) * (1.0 + x * (1.0 - sigmoid(x))),
        Activation::Gelu => normal_cdf(x) + x * normal_density(x),
        Activation::GeluTanh => {
            let (u, du) = gelu_tanh_inner(x);
            0.5 * (1.0 + u.tanh()) + 0.5 * x * (1.0 - u.tanh().powi(2)) * du
        }
        Activation::Sigmoid => sigmoid(x) * (1.0 - sigmoid(x)),
        Activation::Tanh => 1.0 - x.tanh().powi(2),
        Activation::Hardswish if x < -3.0 => 0.0,
        Activation::Hardswish if x <= 3.0 => x / 3.0 + 0.5,
        Activation::Hardswish => 1.0,
        Activation::Hardsigmoid if x > -3.0 && x < 3.0 => 1.0 / 6.0,
        Activation::Hardsigmoid => 0.0,
    }
}

fn activation_vjp(activation: Activation, x: f64, grad: f64) -> Expected {
    let value = grad * activation_derivative(activation, x);
    match activation {
        Activation::Relu | Activation::Relu6 | Activation::LeakyRelu { .. } => Expected::rounded(value),
        _ => smooth(value, grad.abs() * x),
    }
}

fn map_reference(op: Map, x: f64) -> Expected {
    match op {
        Map::Affine { mul, add } => Expected::sum([x * mul as f64, add as f64]),
        Map::Abs => Expected::exact(x.abs()),
        Map::Sqr => Expected::rounded(x * x),
        Map::Clamp { low, high } => Expected::exact(x.max(low as f64).min(high as f64)),
        // zennit's sign(0) is +1, -0 included.
        Map::Stabilize { epsilon } => Expected::sum([x, if x >= 0.0 { epsilon } else { -epsilon } as f64]),
        Map::PositiveMask => Expected::exact((x > 0.0) as u8 as f64),
        Map::NegativeMask => Expected::exact((x < 0.0) as u8 as f64),
        Map::Fill { value } => Expected::exact(value as f64),
        Map::Activation(a) => activation_value(a, x),
    }
}

fn zip_reference(op: Zip, a: f64, b: f64) -> Expected {
    match op {
        Zip::Add => Expected::sum([a, b]),
        Zip::Sub => Expected::sum([a, -b]),
        Zip::Mul => Expected::rounded(a * b),
        Zip::Div => Expected::rounded(a / b),
        Zip::ActivationVjp(activation) => activation_vjp(activation, a, b),
    }
}

const ACTIVATIONS: [Activation; 11] = [
    Activation::Relu,
    Activation::Relu6,
    Activation::LeakyRelu { negative_slope: 0.01 },
    Activation::LeakyRelu { negative_slope: 0.2 },
    Activation::Silu,
    Activation::Gelu,
    Activation::GeluTanh,
    Activation::Sigmoid,
    Activation::Tanh,
    Activation::Hardswish,
    Activation::Hardsigmoid,
];

#[test]
fn map_every_variant() {
    let mut rng = Rng::new(1);
    let x = element_wise_input(&mut rng);
    let mut ops = vec![
        Map::Affine { mul: 1.5, add: -0.25 },
        Map::Abs,
        Map::Sqr,
        Map::Clamp { low: -2.0, high: 3.0 },
        Map::Stabilize { epsilon: 0.1 },
        Map::PositiveMask,
        Map::NegativeMask,
        Map::Fill { value: 2.5 },
        Map::Fill { value: 0.0 },
    ];
    ops.extend(ACTIVATIONS.map(Map::Activation));
    let cases: Vec<_> = ops
        .into_iter()
        .map(|op| {
            let want = Reference::elementwise(&x.dims, x.data.iter().map(|&v| map_reference(op, v as f64)));
            (op, want)
        })
        .collect();
    on_every_device(|on| {
        let tx = on.upload(&x);
        for (op, want) in &cases {
            on.check(&format!("map {op:?} of {:?}", x.dims), tx.map(*op), want, ROUNDING_TOL);
        }
    });
}

#[test]
fn zip_every_variant() {
    let mut rng = Rng::new(2);
    let a = element_wise_input(&mut rng);
    // Either sign, away from zero so that the quotients stay tame.
    let b = Host::from_fn(&a.dims, || {
        let u = rng.uniform();
        u.signum() * (0.5 + u.abs())
    });
    let mut ops = vec![Zip::Add, Zip::Sub, Zip::Mul, Zip::Div];
    ops.extend(ACTIVATIONS.map(Zip::ActivationVjp));
    let cases: Vec<_> = ops
        .into_iter()
        .map(|op| {
            let values = a.data.iter().zip(&b.data);
            let want = Reference::elementwise(&a.dims, values.map(|(&u, &v)| zip_reference(op, u as f64, v as f64)));
            (op, want)
        })
        .collect();
    on_every_device(|on| {
        let (ta, tb) = (on.upload(&a), on.upload(&b));
        for (op, want) in &cases {
            on.check(
                &format!("zip {op:?} of {:?}", a.dims),
                ta.zip(&tb, *op),
                want,
                ROUNDING_TOL,
            );
        }
    });
}

/// Scale and shift each absent, [C] (shared by the samples) or [N, C] (one row per sample),
/// in every combination, for inputs of rank 2, 3 and 4.
#[test]
fn channel_affine_every_parameter_shape() {
    let mut rng = Rng::new(3);
    let (n, c) = (3, 5);
    for dims in [vec![n, c, 4, 3], vec![n, c, 7], vec![n, c]] {
        let x = Host::random(&mut rng, &dims);
        let inner: usize = dims[2..].iter().product();
        let tables = |rng: &mut Rng| [None, Some(Host::random(rng, &[c])), Some(Host::random(rng, &[n, c]))];
        for scale in tables(&mut rng) {
            for shift in tables(&mut rng) {
                // The table entry of element i: [C] by channel, [N, C] by sample and channel.
                let entry = |table: &Option<Host>, i: usize| {
                    table.as_ref().map(|t| {
                        let row = i / inner;
                        t.data[if t.dims.len() == 1 { row % c } else { row }] as f64
                    })
                };
                let want = Reference::elementwise(
                    &dims,
                    x.data.iter().enumerate().map(|(i, &v)| {
                        let scaled = v as f64 * entry(&scale, i).unwrap_or(1.0);
                        Expected::sum([scaled, entry(&shift, i).unwrap_or(0.0)])
                    }),
                );
                let shape = |t: &Option<Host>| t.as_ref().map(|t| t.dims.clone());
                let what = format!(
                    "channel_affine of {dims:?}, scale {:?}, shift {:?}",
                    shape(&scale),
                    shape(&shift)
                );
                on_every_device(|on| {
                    let upload = |t: &Option<Host>| t.as_ref().map(|t| on.upload(t));
                    let (ts, tb) = (upload(&scale), upload(&shift));
                    let got = on.upload(&x).channel_affine(ts.as_ref(), tb.as_ref());
                    on.check(&what, got, &want, ROUNDING_TOL);
                });
            }
        }
    }
}

/// x viewed as [outer, mid, inner], summed over mid.
fn sum_over_middle(x: &Host, outer: usize, inner: usize) -> Vec<Expected> {
    let mid = x.data.len() / (outer * inner).max(1);
    let mut sums = vec![Expected::default(); outer * inner];
    for (i, &v) in x.data.iter().enumerate() {
        sums[(i / (mid * inner)) * inner + i % inner].add(v as f64);
    }
    sums
}

fn reduce_reference(op: Reduce, x: &Host) -> Reference {
    let dims = &x.dims;
    let (sums, out_dims) = match op {
        Reduce::MeanHw => {
            let plane = dims[2] * dims[3];
            let means = sum_over_middle(x, dims[0] * dims[1], 1).into_iter();
            let means = means.map(|s| s.divided_by(plane as f64)).collect();
            (means, vec![dims[0], dims[1], 1, 1])
        }
        Reduce::SumChannels => {
            let inner: usize = dims[2..].iter().product();
            let mut out_dims = vec![dims[0], 1];
            out_dims.extend_from_slice(&dims[2..]);
            (sum_over_middle(x, dims[0], inner), out_dims)
        }
        Reduce::SumPerSample => (sum_over_middle(x, dims[0], 1), vec![dims[0]]),
    };
    Reference {
        dims: out_dims,
        data: sums,
    }
}

/// Planes larger than a 256-thread workgroup's stride, and every rank each reduction takes.
#[test]
fn reduce_every_variant() {
    let mut rng = Rng::new(4);
    let cases = [
        (Reduce::MeanHw, vec![3, 5, 40, 41]),
        (Reduce::MeanHw, vec![2, 3, 1, 1]),
        (Reduce::SumChannels, vec![3, 5, 40, 41]),
        (Reduce::SumChannels, vec![2, 300, 3]),
        (Reduce::SumChannels, vec![4, 300]),
        (Reduce::SumPerSample, vec![3, 5, 40, 41]),
        (Reduce::SumPerSample, vec![4, 300]),
        (Reduce::SumPerSample, vec![5]),
    ];
    for (op, dims) in cases {
        let x = Host::random(&mut rng, &dims);
        let want = reduce_reference(op, &x);
        on_every_device(|on| {
            on.check(
                &format!("reduce {op:?} of {dims:?}"),
                on.upload(&x).reduce(op),
                &want,
                SUM_TOL,
            );
        });
    }
}

// ---------------------------------------------------------------- data movement

#[test]
fn reshape_narrow_rows_cat_rows_to_vec() {
    let mut rng = Rng::new(5);
    let x = Host::random(&mut rng, &[5, 3, 2]);
    let y = Host::random(&mut rng, &[2, 3, 2]);
    let fresh = [x.clone(), Host::new(&[], vec![0.25]), Host::new(&[0, 4], vec![])];
    on_every_device(|on| {
        for h in &fresh {
            let what = format!("to_vec of a new tensor of {:?}", h.dims);
            on.check(&what, on.device.tensor(&h.data, &h.dims), &Reference::copy(h), 0.0);
        }
        let (tx, ty) = (on.upload(&x), on.upload(&y));
        for dims in [&[5, 6][..], &[30], &[2, 15], &[5, 3, 2, 1]] {
            let what = format!("reshape of {:?} to {dims:?}", x.dims);
            on.check(&what, tx.reshape(dims), &Reference::copy(&x.reshaped(dims)), 0.0);
        }
        for (start, len) in [(1, 3), (0, 5), (4, 1), (2, 0)] {
            let what = format!("narrow_rows({start}, {len}) of {:?}", x.dims);
            on.check(
                &what,
                tx.narrow_rows(start, len),
                &Reference::copy(&x.rows(start, len)),
                0.0,
            );
        }
        let what = "narrow_rows(3, 7) of a reshape to [15, 2]";
        let want = x.reshaped(&[15, 2]).rows(3, 7);
        let got = on.ok(what, tx.reshape(&[15, 2])).narrow_rows(3, 7);
        on.check(what, got, &Reference::copy(&want), 0.0);
        let head = x.rows(0, 1);
        let th = on.ok("narrow_rows", tx.narrow_rows(0, 1));
        let want = Host::cat_rows(&[&x, &y, &head]);
        let what = "cat_rows of [5, 3, 2], [2, 3, 2] and [1, 3, 2]";
        on.check(
            what,
            Tensor::cat_rows(&[tx.clone(), ty.clone(), th]),
            &Reference::copy(&want),
            0.0,
        );
        let none = on.ok("narrow_rows", tx.narrow_rows(2, 0));
        let what = "cat_rows of [0, 3, 2], [2, 3, 2] and [0, 3, 2]";
        let got = Tensor::cat_rows(&[none.clone(), ty.clone(), none]);
        on.check(what, got, &Reference::copy(&y), 0.0);
    });
}

// ---------------------------------------------------------------- matmul

#[test]
fn matmul_both_layouts() {
    let mut rng = Rng::new(6);
    // Ragged 64-tiles and 16-deep slices; (130, 70, 65) is past gemm's threading threshold,
    // (67, 600, 70) past its 512-deep K blocking; fewer than 32 rows take wgpu's one
    // invocation per element, (20, 70, 300) over more than one workgroup.
    for (m, k, n) in [
        (37, 53, 29),
        (1, 1, 1),
        (130, 70, 65),
        (3, 200, 2),
        (67, 600, 70),
        (20, 70, 300),
    ] {
        let a = Host::random(&mut rng, &[m, k]);
        let b = Host::random(&mut rng, &[k, n]);
        let b_t = Host::new(&[n, k], (0..n * k).map(|i| b.data[(i % k) * n + i / k]).collect());
        let mut want = Reference::zeros(&[m, n]);
        for i in 0..m {
            for j in 0..n {
                for l in 0..k {
                    want.data[i * n + j].add(a.data[i * k + l] as f64 * b.data[l * n + j] as f64);
                }
            }
        }
        on_every_device(|on| {
            let ta = on.upload(&a);
            let what = format!("matmul [{m}, {k}] x [{k}, {n}]");
            on.check(&what, ta.matmul(&on.upload(&b), false), &want, SUM_TOL);
            let what = format!("matmul [{m}, {k}] x [{n}, {k}]^T");
            on.check(&what, ta.matmul(&on.upload(&b_t), true), &want, SUM_TOL);
        });
    }
}

/// A batch of products of two activations, each product as `matmul` computes it alone: both
/// wgpu kernels (fewer than 32 rows, and ragged tiles) over several products in one dispatch.
#[test]
fn batched_matmul_both_layouts() {
    let mut rng = Rng::new(7);
    for (batch, m, k, n) in [(3, 5, 8, 7), (4, 37, 16, 70), (1, 65, 9, 3)] {
        let a = Host::random(&mut rng, &[batch, m, k]);
        let b = Host::random(&mut rng, &[batch, k, n]);
        let b_t = Host::new(
            &[batch, n, k],
            (0..batch * n * k)
                .map(|i| {
                    let (z, r) = (i / (n * k), i % (n * k));
                    b.data[z * k * n + (r % k) * n + r / k]
                })
                .collect(),
        );
        let mut want = Reference::zeros(&[batch, m, n]);
        for z in 0..batch {
            for i in 0..m {
                for j in 0..n {
                    for l in 0..k {
                        let term = a.data[(z * m + i) * k + l] as f64 * b.data[(z * k + l) * n + j] as f64;
                        want.data[(z * m + i) * n + j].add(term);
                    }
                }
            }
        }
        on_every_device(|on| {
            let ta = on.upload(&a);
            let what = format!("batched matmul [{batch}, {m}, {k}] x [{batch}, {k}, {n}]");
            on.check(&what, ta.batched_matmul(&on.upload(&b), false), &want, SUM_TOL);
            let what = format!("batched matmul [{batch}, {m}, {k}] x [{batch}, {n}, {k}]^T");
            on.check(&what, ta.batched_matmul(&on.upload(&b_t), true), &want, SUM_TOL);
        });
    }
}

// ---------------------------------------------------------------- convolution

/// A convolution: input [N, C_in, H, W], C_out filters, and the window's geometry.
struct ConvCase {
    input: [usize; 4],
    out_channels: usize,
    geometry: WindowGeometry,
}

impl ConvCase {
    fn new(input: [usize; 4], out_channels: usize, kernel: (usize, usize)) -> Self {
        let geometry = WindowGeometry {
            kernel,
            stride: 1,
            dilation: 1,
            padding: (0, 0, 0, 0),
            groups: 1,
        };
        Self {
            input,
            out_channels,
            geometry,
        }
    }

    fn stride(mut self, stride: usize) -> Self {
        self.geometry.stride = stride;
        self
    }

    fn dilation(mut self, dilation: usize) -> Self {
        self.geometry.dilation = dilation;
        self
    }

    /// Zero padding (top, bottom, left, right).
    fn padding(mut self, top: usize, bottom: usize, left: usize, right: usize) -> Self {
        self.geometry.padding = (top, bottom, left, right);
        self
    }

    fn groups(mut self, groups: usize) -> Self {
        self.geometry.groups = groups;
        self
    }

    fn input_hw(&self) -> (usize, usize) {
        (self.input[2], self.input[3])
    }

    fn kernel_dims(&self) -> [usize; 4] {
        let g = &self.geometry;
        [self.out_channels, self.input[1] / g.groups, g.kernel.0, g.kernel.1]
    }

    /// The output size, from the definition: the windows that fit the padded input.
    fn output_dims(&self) -> [usize; 4] {
        let g = &self.geometry;
        let (t, b, l, r) = g.padding;
        let fit = |len: usize, k: usize| (len - g.dilation * (k - 1) - 1) / g.stride + 1;
        let [n, _, h, w] = self.input;
        [
            n,
            self.out_channels,
            fit(h + t + b, g.kernel.0),
            fit(w + l + r, g.kernel.1),
        ]
    }

    /// Calls `tap(output, input, weight)` with the flat indices of every product the
    /// convolution adds up: output (n, co, oh, ow) takes input (n, ci, y, x) times weight
    /// (co, ci within co's group, ki, kj), where y = oh·stride + ki·dilation - top and
    /// x = ow·stride + kj·dilation - left; taps on the zero padding add nothing and are left out.
    fn for_each_tap(&self, mut tap: impl FnMut(usize, usize, usize)) {
        let [n, cin, h, w] = self.input;
        let [_, cin_g, kh, kw] = self.kernel_dims();
        let [_, cout, ho, wo] = self.output_dims();
        let WindowGeometry {
            stride,
            dilation,
            padding: (top, _, left, _),
            groups,
            ..
        } = self.geometry;
        let cout_g = cout / groups;
        for b in 0..n {
            for co in 0..cout {
                for oh in 0..ho {
                    for ow in 0..wo {
                        let output = ((b * cout + co) * ho + oh) * wo + ow;
                        for cl in 0..cin_g {
                            let ci = (co / cout_g) * cin_g + cl;
                            for ki in 0..kh {
                                for kj in 0..kw {
                                    let y = (oh * stride + ki * dilation) as isize - top as isize;
                                    let x = (ow * stride + kj * dilation) as isize - left as isize;
                                    if y < 0 || x < 0 || y >= h as isize || x >= w as isize {
                                        continue;
                                    }
                                    let input = ((b * cin + ci) * h + y as usize) * w + x as usize;
                                    tap(output, input, ((co * cin_g + cl) * kh + ki) * kw + kj);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

impl fmt::Display for ConvCase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let g = &self.geometry;
        write!(
            f,
            "of {:?} with a {:?} kernel, stride {}, dilation {}, padding {:?} (t, b, l, r), {} groups",
            self.input,
            self.kernel_dims(),
            g.stride,
            g.dilation,
            g.padding,
            g.groups
        )
    }
}

/// conv2d, conv2d_transposed and their adjointness for one case, on every device.
fn check_conv(case: &ConvCase, seed: u64) {
    let mut rng = Rng::new(seed);
    let x = Host::random(&mut rng, &case.input);
    let kernel = Host::random(&mut rng, &case.kernel_dims());
    let grad = Host::random(&mut rng, &case.output_dims());
    let mut forward = Reference::zeros(&case.output_dims());
    let mut transposed = Reference::zeros(&case.input);
    case.for_each_tap(|o, i, k| {
        let weight = kernel.data[k] as f64;
        forward.data[o].add(x.data[i] as f64 * weight);
        transposed.data[i].add(grad.data[o] as f64 * weight);
    });
    on_every_device(|on| {
        let tk = on.upload(&kernel);
        let what = format!("conv2d {case}");
        let y = on.check(&what, on.upload(&x).conv2d(&tk, &case.geometry), &forward, SUM_TOL);
        let what = format!("conv2d_transposed {case}");
        let got = on.upload(&grad).conv2d_transposed(&tk, &case.geometry, case.input_hw());
        let dx = on.check(&what, got, &transposed, SUM_TOL);
        // Linear in x: the forward's derivative along x is conv2d(x) itself.
        let what = format!("conv2d_transposed as conv2d's adjoint {case}");
        on.check_adjoint(&what, (&grad.data, &y), (&dx, &x.data));
    });
}

/// im2col (CPU); on wgpu the gathering input-VJP (under 16 input channels per group) and,
/// by output size, the GEMM or the direct forward: strides 1, 2 and 3, dilation, asymmetric
/// padding, odd sizes.
#[test]
fn conv2d_strided_dilated_padded() {
    let cases = [
        ConvCase::new([2, 3, 7, 9], 5, (3, 3)).stride(2).padding(1, 1, 1, 1),
        ConvCase::new([1, 3, 7, 9], 5, (3, 3)).stride(2),
        ConvCase::new([2, 4, 9, 8], 6, (3, 2)).dilation(2).padding(0, 2, 1, 3),
        ConvCase::new([1, 2, 10, 11], 3, (3, 3))
            .stride(3)
            .dilation(2)
            .padding(2, 1, 0, 2),
        // More padding than the kernel reaches: whole rows and columns of zeros.
        ConvCase::new([1, 2, 5, 6], 3, (2, 2)).padding(3, 0, 0, 2),
        // One channel, one filter: not depthwise, whatever groups == channels suggests.
        ConvCase::new([2, 1, 6, 5], 1, (2, 3)).stride(2).padding(1, 0, 0, 1),
    ];
    for (seed, case) in cases.iter().enumerate() {
        check_conv(case, 100 + seed as u64);
    }
}

#[test]
fn conv2d_grouped_and_depthwise() {
    let cases = [
        ConvCase::new([2, 8, 6, 7], 12, (3, 3)).padding(1, 1, 1, 1).groups(4),
        // A channel multiplier of 2: grouped, not the depthwise kernels.
        ConvCase::new([1, 8, 9, 9], 16, (3, 3))
            .stride(2)
            .padding(1, 0, 1, 0)
            .groups(8),
        // Depthwise (groups == C_in == C_out): CPU's direct kernels, wgpu's per-output threads.
        ConvCase::new([2, 6, 7, 9], 6, (3, 3))
            .stride(2)
            .padding(1, 1, 1, 1)
            .groups(6),
        ConvCase::new([1, 5, 11, 10], 5, (5, 3))
            .dilation(2)
            .padding(3, 1, 0, 2)
            .groups(5),
        ConvCase::new([2, 4, 10, 13], 4, (3, 3))
            .stride(3)
            .padding(0, 1, 2, 0)
            .groups(4),
        ConvCase::new([1, 3, 6, 5], 3, (1, 1)).groups(3),
        // Stride 1 on CPU: one pass per tap over a padded plane, both ways; with more padding
        // than the kernel reaches, the transpose takes the row-by-row loops.
        ConvCase::new([2, 3, 5, 4], 3, (2, 2)).padding(2, 0, 0, 2).groups(3),
        ConvCase::new([2, 6, 14, 13], 6, (3, 3)).padding(1, 1, 1, 1).groups(6),
        ConvCase::new([1, 4, 9, 7], 4, (3, 3)).padding(0, 2, 1, 0).groups(4),
    ];
    for (seed, case) in cases.iter().enumerate() {
        check_conv(case, 200 + seed as u64);
    }
}

#[test]
fn conv2d_pointwise() {
    let cases = [
        // CPU: the columns are the input planes; wgpu: more than one 64-channel tile.
        ConvCase::new([2, 16, 6, 6], 70, (1, 1)),
        ConvCase::new([2, 6, 5, 7], 4, (1, 1)).groups(2),
        // Strided or padded 1x1 convolutions are not pointwise; with stride 2 the odd rows
        // and columns get no gradient at all.
        ConvCase::new([2, 16, 9, 7], 24, (1, 1)).stride(2),
        ConvCase::new([1, 3, 4, 5], 2, (1, 1)).padding(1, 0, 0, 1),
    ];
    for (seed, case) in cases.iter().enumerate() {
        check_conv(case, 300 + seed as u64);
    }
}

/// Larger than one wgpu tile in every direction; on CPU, reductions deeper than gemm's K
/// blocking and products past its threading threshold.
#[test]
fn conv2d_larger_than_the_tiles() {
    let cases = [
        // 70 x 143 outputs per sample, 72·9 = 648 deep (ragged 16-slices, 2 K-blocks on CPU);
        // the input-VJP: 72 channels (2 tiles) x 143 pixels, 630 deep.
        ConvCase::new([2, 72, 13, 11], 70, (3, 3)).padding(1, 1, 1, 1),
        ConvCase::new([1, 3, 17, 19], 130, (7, 7)).stride(2).padding(3, 3, 3, 3),
        ConvCase::new([3, 20, 13, 11], 33, (3, 3)).padding(1, 1, 1, 1),
    ];
    for (seed, case) in cases.iter().enumerate() {
        check_conv(case, 400 + seed as u64);
    }
}

/// wgpu's input-VJP runs as a GEMM from 16 input channels per group and 32 input pixels per
/// stride phase, one per phase: these keep to both and cover its phases, tile edges and
/// empty phases.
#[test]
fn conv2d_transposed_by_stride_phase() {
    let cases = [
        // 67 channels per group: a full and a ragged tile; 19 outputs per group: a reduction
        // that is no multiple of the 16-deep slices.
        ConvCase::new([2, 134, 13, 14], 38, (3, 3))
            .stride(2)
            .padding(1, 0, 2, 1)
            .groups(2),
        // Dilation 2 with stride 2: every tap lands on even offsets, one phase per axis is empty.
        ConvCase::new([1, 17, 11, 12], 5, (3, 3))
            .stride(2)
            .dilation(2)
            .padding(2, 1, 2, 2),
        ConvCase::new([1, 20, 19, 20], 7, (3, 3)).stride(3).padding(1, 1, 1, 1),
        // Stride 4, dilation 2 (taps every other step); stride 3, dilation 2 (every third).
        ConvCase::new([2, 18, 25, 23], 3, (5, 3))
            .stride(4)
            .dilation(2)
            .padding(3, 0, 1, 2),
        ConvCase::new([1, 40, 20, 19], 6, (5, 4))
            .stride(3)
            .dilation(2)
            .padding(1, 2, 3, 0)
            .groups(2),
    ];
    for (seed, case) in cases.iter().enumerate() {
        check_conv(case, 500 + seed as u64);
    }
}

/// Maps under 32 pixels (a network's last stages at a small input): wgpu sums each output
/// directly and gathers each input-gradient, whatever the channel counts and groups.
#[test]
fn conv2d_small_maps() {
    let cases = [
        ConvCase::new([2, 8, 4, 5], 12, (3, 3)).padding(1, 1, 1, 1).groups(4),
        // 67 input channels per group, 5x5 outputs: the input-VJP's GEMM would need 32 pixels.
        ConvCase::new([2, 134, 9, 10], 38, (3, 3))
            .stride(2)
            .padding(1, 0, 2, 1)
            .groups(2),
        ConvCase::new([1, 70, 2, 2], 40, (3, 3)).padding(1, 1, 1, 1),
    ];
    for (seed, case) in cases.iter().enumerate() {
        check_conv(case, 600 + seed as u64);
    }
}

// ---------------------------------------------------------------- max pooling

/// A pooling window; stride and dilation are (height, width).
fn pool_window(
    kernel: (usize, usize),
    stride: (usize, usize),
    padding: (usize, usize),
    dilation: (usize, usize),
    ceil_mode: bool,
) -> PoolWindow {
    PoolWindow {
        kernel,
        stride,
        padding,
        dilation,
        ceil_mode,
    }
}

/// PyTorch's pooled length: windows that start inside the input or its left padding.
fn pooled_len(len: usize, k: usize, s: usize, p: usize, d: usize, ceil_mode: bool) -> usize {
    let room = len + 2 * p - d * (k - 1) - 1;
    let out = if ceil_mode { room.div_ceil(s) } else { room / s } + 1;
    if ceil_mode && (out - 1) * s >= len + p {
        out - 1
    } else {
        out
    }
}

/// Each window's winner in PyTorch's rule: the first maximum, in row-major order, of the
/// window's cells inside the input (padding never wins). Flat indices into `x`.
fn max_pool_winners(x: &Host, w: &PoolWindow) -> (Vec<usize>, [usize; 4]) {
    let &[n, c, h, wd] = x.dims.as_slice() else {
        unreachable!()
    };
    let ((kh, kw), (sh, sw), (ph, pw), (dh, dw)) = (w.kernel, w.stride, w.padding, w.dilation);
    let ho = pooled_len(h, kh, sh, ph, dh, w.ceil_mode);
    let wo = pooled_len(wd, kw, sw, pw, dw, w.ceil_mode);
    let mut winners = Vec::with_capacity(n * c * ho * wo);
    for plane in 0..n * c {
        for oh in 0..ho {
            for ow in 0..wo {
                let mut best: Option<usize> = None;
                for ki in 0..kh {
                    for kj in 0..kw {
                        let y = (oh * sh + ki * dh) as isize - ph as isize;
                        let x_ = (ow * sw + kj * dw) as isize - pw as isize;
                        if y < 0 || x_ < 0 || y >= h as isize || x_ >= wd as isize {
                            continue;
                        }
                        let at = (plane * h + y as usize) * wd + x_ as usize;
                        if best.is_none_or(|b| x.data[at] > x.data[b]) {
                            best = Some(at);
                        }
                    }
                }
                winners.push(best.expect("PyTorch's windows always hold an input cell"));
            }
        }
    }
    (winners, [n, c, ho, wo])
}

/// The references of max_pool at `x` and of max_pool_vjp at `x` for `grad`.
fn max_pool_references(x: &Host, window: &PoolWindow, grad: &Host) -> (Reference, Reference) {
    let (winners, out_dims) = max_pool_winners(x, window);
    assert_eq!(grad.dims, out_dims);
    let pooled = Reference::elementwise(&out_dims, winners.iter().map(|&at| Expected::exact(x.data[at] as f64)));
    let mut routed = Reference::zeros(&x.dims);
    for (&at, &g) in winners.iter().zip(&grad.data) {
        routed.data[at].add(g as f64);
    }
    (pooled, routed)
}

/// Distinct values k/64, shuffled, and directions j/256 with |j| <= 256: x + v/1024 is
/// (2^12·k + j)·2^-18, exact in f32 while |k| < 2^11, and keeps every window's winner, so that
/// (max_pool(x + v/1024) - max_pool(x)) * 1024 is exactly max_pool's derivative along v.
fn distinct_input_and_direction(rng: &mut Rng, dims: &[usize]) -> (Host, Host) {
    let len: usize = dims.iter().product();
    assert!(len < 4096, "x + v/1024 is exact for |k| < 2^11 only");
    let mut ranks: Vec<usize> = (0..len).collect();
    for i in (1..len).rev() {
        ranks.swap(i, rng.below(i + 1));
    }
    let x = Host::new(
        dims,
        ranks.iter().map(|&k| (k as f32 - (len / 2) as f32) / 64.0).collect(),
    );
    let v = Host::from_fn(dims, || (rng.below(513) as f32 - 256.0) / 256.0);
    (x, v)
}

const JVP_STEP: f32 = 1.0 / 1024.0;

#[test]
fn max_pool_and_its_vjp() {
    let cases = [
        ([2, 3, 7, 9], pool_window((3, 3), (2, 2), (1, 1), (1, 1), true)),
        ([1, 2, 10, 11], pool_window((3, 3), (2, 2), (1, 1), (2, 2), true)),
        ([2, 2, 6, 6], pool_window((2, 2), (2, 2), (0, 0), (1, 1), false)),
        ([1, 3, 8, 9], pool_window((3, 2), (1, 1), (1, 1), (1, 1), false)),
        ([1, 2, 9, 8], pool_window((2, 3), (2, 2), (1, 1), (2, 2), true)),
        // A different stride and dilation per axis: the interface takes them, though the
        // layers (PoolWindow::validate) build only equal ones.
        ([1, 3, 8, 9], pool_window((3, 2), (2, 1), (1, 1), (1, 2), true)),
        // Stride past the kernel: cells no window sees.
        ([1, 1, 5, 5], pool_window((2, 2), (3, 3), (1, 0), (1, 1), true)),
        // Overlapping windows, more outputs than a 256-thread workgroup.
        ([2, 3, 17, 19], pool_window((3, 3), (1, 1), (1, 1), (1, 1), false)),
        // Rows wide enough for the CPU kernel's column-parallel inside windows, at stride 2
        // (phase-split rows, an odd width) and stride 3 (the general split).
        ([1, 2, 9, 37], pool_window((3, 3), (2, 2), (1, 1), (1, 1), true)),
        ([1, 2, 8, 40], pool_window((3, 2), (3, 3), (1, 1), (2, 1), false)),
    ];
    let mut rng = Rng::new(30);
    for (dims, window) in cases {
        let label = format!("of {dims:?}, {window:?}");
        // Ties everywhere: few distinct values, all negative so that a padding cell read as
        // zero would win; and one constant input, where every window's first cell wins.
        let inputs = [
            ("random", Host::random(&mut rng, &dims)),
            ("ties", Host::from_fn(&dims, || -1.0 - rng.below(3) as f32)),
            ("constant", Host::from_fn(&dims, || 0.5)),
        ];
        let (x, v) = distinct_input_and_direction(&mut rng, &dims);
        let x_plus = Host::new(
            &dims,
            x.data.iter().zip(&v.data).map(|(a, b)| a + b * JVP_STEP).collect(),
        );
        let (_, out_dims) = max_pool_winners(&x, &window);
        let grad = Host::random(&mut rng, &out_dims);
        let references: Vec<_> = inputs
            .iter()
            .map(|(kind, input)| (kind, input, max_pool_references(input, &window, &grad)))
            .collect();
        on_every_device(|on| {
            let tg = on.upload(&grad);
            for (kind, input, (pooled, routed)) in &references {
                let tx = on.upload(input);
                on.check(
                    &format!("max_pool {label}, {kind} input"),
                    tx.max_pool(&window),
                    pooled,
                    0.0,
                );
                let what = format!("max_pool_vjp {label}, {kind} input");
                on.check(&what, tx.max_pool_vjp(&tg, &window), routed, SUM_TOL);
            }
            let pool = |h: &Host| on.ok("max_pool", on.ok("max_pool", on.upload(h).max_pool(&window)).to_vec());
            let jvp: Vec<f32> = pool(&x_plus)
                .iter()
                .zip(pool(&x))
                .map(|(a, b)| (a - b) / JVP_STEP)
                .collect();
            let vjp = on.ok("max_pool_vjp", on.upload(&x).max_pool_vjp(&tg, &window));
            let what = format!("max_pool_vjp as max_pool's adjoint {label}");
            on.check_adjoint(&what, (&grad.data, &jvp), (&on.ok(&what, vjp.to_vec()), &v.data));
        });
    }
}

/// PyTorch's tie rule spelled out, so that the reference itself is pinned: overlapping 2x2
/// windows over ones each send their gradient to their own first cell.
#[test]
fn max_pool_vjp_sends_ties_to_the_first_cell() {
    let x = Host::new(&[1, 1, 4, 4], vec![1.0; 16]);
    let grad = Host::new(&[1, 1, 3, 3], vec![1.0; 9]);
    let window = pool_window((2, 2), (1, 1), (0, 0), (1, 1), false);
    let (_, routed) = max_pool_references(&x, &window, &grad);
    let firsts = [1., 1., 1., 0., 1., 1., 1., 0., 1., 1., 1., 0., 0., 0., 0., 0.];
    assert_eq!(routed.data.iter().map(|e| e.value).collect::<Vec<_>>(), firsts);
    on_every_device(|on| {
        let got = on.upload(&x).max_pool_vjp(&on.upload(&grad), &window);
        on.check("max_pool_vjp of ones, 2x2 windows, stride 1", got, &routed, 0.0);
    });
}

// ---------------------------------------------------------------- window means

/// One axis of bins: [start, end) ranges and the divisor's factor of each.
type AxisBins = (Vec<(usize, usize)>, Vec<usize>);

/// avg_pool2d along one axis as PyTorch defines it: window o spans [o·s - p, o·s - p + k)
/// cut at the end of the right padding, counted with its padding when `count_include_pad`,
/// summed over its cells inside the input.
fn average_pool_axis(len: usize, k: usize, s: usize, p: usize, ceil_mode: bool, count_include_pad: bool) -> AxisBins {
    (0..pooled_len(len, k, s, p, 1, ceil_mode))
        .map(|o| {
            let start = (o * s) as isize - p as isize;
            let end = (start + k as isize).min((len + p) as isize);
            let (inside_start, inside_end) = (start.max(0) as usize, end.min(len as isize) as usize);
            let count = if count_include_pad {
                (end - start) as usize
            } else {
                inside_end - inside_start
            };
            ((inside_start, inside_end), count)
        })
        .unzip()
}

/// adaptive_avg_pool2d along one axis: bin i spans [floor(i·len/out), ceil((i+1)·len/out)).
fn adaptive_axis(len: usize, out: usize) -> AxisBins {
    (0..out)
        .map(|i| {
            let (start, end) = (i * len / out, ((i + 1) * len).div_ceil(out));
            ((start, end), end - start)
        })
        .unzip()
}

fn window_bins(
    input_hw: (usize, usize),
    rows: AxisBins,
    cols: AxisBins,
    divisor_override: Option<usize>,
) -> WindowBins {
    WindowBins {
        input_hw,
        rows: rows.0,
        cols: cols.0,
        row_counts: rows.1,
        col_counts: cols.1,
        divisor_override,
    }
}

/// Calls `cell(output, input, divisor)` for every input cell of every bin.
fn for_each_bin_cell(dims: [usize; 4], bins: &WindowBins, mut cell: impl FnMut(usize, usize, f64)) {
    let [n, c, h, w] = dims;
    let (ho, wo) = (bins.rows.len(), bins.cols.len());
    for plane in 0..n * c {
        for (i, &(r0, r1)) in bins.rows.iter().enumerate() {
            for (j, &(c0, c1)) in bins.cols.iter().enumerate() {
                let divisor = bins.divisor_override.unwrap_or(bins.row_counts[i] * bins.col_counts[j]) as f64;
                for r in r0..r1 {
                    for q in c0..c1 {
                        cell((plane * ho + i) * wo + j, (plane * h + r) * w + q, divisor);
                    }
                }
            }
        }
    }
}

#[test]
fn window_mean_and_its_vjp() {
    let avg = average_pool_axis;
    let cases = [
        // Adaptive average pooling: overlapping bins of different sizes.
        (
            [2, 3, 7, 9],
            window_bins((7, 9), adaptive_axis(7, 3), adaptive_axis(9, 4), None),
        ),
        (
            [2, 3, 7, 9],
            window_bins((7, 9), adaptive_axis(7, 3), adaptive_axis(9, 4), Some(5)),
        ),
        // More outputs and inputs than a 256-thread workgroup.
        (
            [2, 4, 20, 23],
            window_bins((20, 23), adaptive_axis(20, 7), adaptive_axis(23, 7), None),
        ),
        // Global average pooling.
        (
            [3, 4, 5, 6],
            window_bins((5, 6), adaptive_axis(5, 1), adaptive_axis(6, 1), None),
        ),
        // avg_pool2d k3 s2 p1, with and without count_include_pad, ceil_mode, divisor_override.
        (
            [1, 2, 8, 11],
            window_bins(
                (8, 11),
                avg(8, 3, 2, 1, false, true),
                avg(11, 3, 2, 1, false, true),
                None,
            ),
        ),
        (
            [1, 2, 8, 11],
            window_bins(
                (8, 11),
                avg(8, 3, 2, 1, true, false),
                avg(11, 3, 2, 1, true, false),
                None,
            ),
        ),
        (
            [2, 2, 8, 11],
            window_bins(
                (8, 11),
                avg(8, 3, 2, 1, true, true),
                avg(11, 3, 2, 1, true, true),
                Some(4),
            ),
        ),
        // Non-square: 2x3 windows, strides 2 and 1 (one axis each), padding on the columns only.
        (
            [2, 3, 6, 9],
            window_bins(
                (6, 9),
                avg(6, 2, 2, 0, false, true),
                avg(9, 3, 1, 1, false, false),
                None,
            ),
        ),
    ];
    let mut rng = Rng::new(50);
    for (dims, bins) in cases {
        let out_dims = [dims[0], dims[1], bins.rows.len(), bins.cols.len()];
        let label = format!(
            "of {dims:?} over rows {:?}, columns {:?}, divisor override {:?}",
            bins.rows, bins.cols, bins.divisor_override
        );
        let x = Host::random(&mut rng, &dims);
        let grad = Host::random(&mut rng, &out_dims);
        let mut means = Reference::zeros(&out_dims);
        let mut spread = Reference::zeros(&dims);
        for_each_bin_cell(dims, &bins, |o, i, divisor| {
            means.data[o].add(x.data[i] as f64 / divisor);
            spread.data[i].add(grad.data[o] as f64 / divisor);
        });
        on_every_device(|on| {
            let y = on.check(
                &format!("window_mean {label}"),
                on.upload(&x).window_mean(&bins),
                &means,
                SUM_TOL,
            );
            let dx = on.check(
                &format!("window_mean_vjp {label}"),
                on.upload(&grad).window_mean_vjp(&bins),
                &spread,
                SUM_TOL,
            );
            // Linear in x: the forward's derivative along x is window_mean(x) itself.
            let what = format!("window_mean_vjp as window_mean's adjoint {label}");
            on.check_adjoint(&what, (&grad.data, &y), (&dx, &x.data));
        });
    }
}

// ---------------------------------------------------------------- layout and normalisation

#[test]
fn permute_every_order() {
    let cases: [(&[usize], &[usize]); 5] = [
        (&[2, 3, 4, 5], &[0, 2, 3, 1]),
        (&[2, 4, 5, 3], &[0, 3, 1, 2]),
        (&[3, 4, 5], &[2, 0, 1]),
        (&[2, 3, 1, 4, 2], &[4, 3, 2, 1, 0]),
        // More elements than one 256-thread workgroup, the identity order too.
        (&[3, 17, 9, 11], &[0, 1, 2, 3]),
    ];
    let mut rng = Rng::new(60);
    for (dims, order) in cases {
        let x = Host::random(&mut rng, dims);
        let out_dims: Vec<usize> = order.iter().map(|&k| dims[k]).collect();
        let mut want = Reference::zeros(&out_dims);
        let strides: Vec<usize> = (0..dims.len()).map(|k| dims[k + 1..].iter().product()).collect();
        for (i, slot) in want.data.iter_mut().enumerate() {
            // Output index i, digit by digit, read from the input at the permuted strides.
            let (mut rest, mut from) = (i, 0);
            for k in (0..order.len()).rev() {
                from += (rest % out_dims[k]) * strides[order[k]];
                rest /= out_dims[k];
            }
            *slot = Expected::exact(x.data[from] as f64);
        }
        on_every_device(|on| {
            on.check(
                &format!("permute {order:?} of {dims:?}"),
                on.upload(&x).permute(order),
                &want,
                0.0,
            );
        });
    }
}

/// LayerNorm's normalisation over the channels of NCHW, over the last axis, and over rows
/// longer than a workgroup; and its input-VJP, against the closed form
/// dx = (g - mean(g) - y mean(g y)) / sigma in float64, and (g - mean(g)) / sigma with the
/// standard deviation held constant.
#[test]
fn normalize_and_its_vjp() {
    let eps = 1e-5;
    let mut rng = Rng::new(61);
    for (dims, axis) in ALONG_AXIS_CASES {
        // Off-centre and scaled, so that the mean and the variance both matter.
        let mut x = Host::random(&mut rng, dims);
        x.data.iter_mut().for_each(|v| *v = 2.0 * *v + 0.5);
        let grad = Host::random(&mut rng, dims);
        let mut y = Reference::zeros(dims);
        let mut dx = Reference::zeros(dims);
        let mut dx_constant_std = Reference::zeros(dims);
        for at in lines_along(dims, axis) {
            let n = at.len() as f64;
            let xs: Vec<f64> = at.iter().map(|&i| x.data[i] as f64).collect();
            let gs: Vec<f64> = at.iter().map(|&i| grad.data[i] as f64).collect();
            let mean = xs.iter().sum::<f64>() / n;
            let sigma = (xs.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n + eps).sqrt();
            let ys: Vec<f64> = xs.iter().map(|v| (v - mean) / sigma).collect();
            let mean_g = gs.iter().sum::<f64>() / n;
            let mean_gy = gs.iter().zip(&ys).map(|(g, y)| g * y).sum::<f64>() / n;
            let abs_mean = |v: &[f64]| v.iter().map(|a| a.abs()).sum::<f64>() / n;
            let (x_scale, g_scale) = (abs_mean(&xs), abs_mean(&gs));
            for (j, &i) in at.iter().enumerate() {
                y.data[i] = Expected {
                    value: ys[j],
                    scale: 4.0 * (xs[j].abs() + x_scale) / sigma,
                };
                dx.data[i] = Expected {
                    value: (gs[j] - mean_g - ys[j] * mean_gy) / sigma,
                    scale: 4.0 * (gs[j].abs() + g_scale + ys[j].abs() * g_scale * 3.0) / sigma,
                };
                dx_constant_std.data[i] = Expected {
                    value: (gs[j] - mean_g) / sigma,
                    scale: 4.0 * (gs[j].abs() + g_scale) / sigma,
                };
            }
        }
        on_every_device(|on| {
            let label = format!("of {dims:?} along axis {axis}");
            let tx = on.upload(&x);
            on.check(
                &format!("normalize {label}"),
                tx.normalize(axis, eps as f32),
                &y,
                SUM_TOL,
            );
            on.check(
                &format!("normalize_vjp {label}"),
                tx.normalize_vjp(&on.upload(&grad), axis, eps as f32, StdTerm::Differentiated),
                &dx,
                SUM_TOL,
            );
            on.check(
                &format!("normalize_vjp, standard deviation constant, {label}"),
                tx.normalize_vjp(&on.upload(&grad), axis, eps as f32, StdTerm::Constant),
                &dx_constant_std,
                SUM_TOL,
            );
        });
    }
}

/// Softmax with its max subtracted (inputs near 90, where exp overflows f32) and its VJP
/// from the output, along the channels, the last axis, a long axis and an axis of length 1.
#[test]
fn softmax_and_its_vjp() {
    let mut rng = Rng::new(63);
    for (dims, axis) in ALONG_AXIS_CASES {
        let mut x = Host::random(&mut rng, dims);
        x.data.iter_mut().for_each(|v| *v = 4.0 * *v + 90.0);
        let grad = Host::random(&mut rng, dims);
        let mut s = Reference::zeros(dims);
        let mut s_rounded = Host::new(dims, vec![0.0; x.data.len()]);
        let mut dx = Reference::zeros(dims);
        for at in lines_along(dims, axis) {
            let xs: Vec<f64> = at.iter().map(|&i| x.data[i] as f64).collect();
            let top = xs.iter().copied().fold(f64::MIN, f64::max);
            let total: f64 = xs.iter().map(|v| (v - top).exp()).sum();
            for (j, &i) in at.iter().enumerate() {
                let value = (xs[j] - top).exp() / total;
                s.data[i] = Expected {
                    value,
                    scale: value * (4.0 + (xs[j] - top).abs()),
                };
                s_rounded.data[i] = value as f32;
            }
            // The VJP reads the f32 output it is given.
            let ss: Vec<f64> = at.iter().map(|&i| s_rounded.data[i] as f64).collect();
            let gs: Vec<f64> = at.iter().map(|&i| grad.data[i] as f64).collect();
            let along: f64 = gs.iter().zip(&ss).map(|(g, s)| g * s).sum();
            let along_scale: f64 = gs.iter().zip(&ss).map(|(g, s)| (g * s).abs()).sum();
            for (j, &i) in at.iter().enumerate() {
                dx.data[i] = Expected {
                    value: ss[j] * (gs[j] - along),
                    scale: 4.0 * ss[j] * (gs[j].abs() + along_scale),
                };
            }
        }
        on_every_device(|on| {
            let label = format!("of {dims:?} along axis {axis}");
            on.check(&format!("softmax {label}"), on.upload(&x).softmax(axis), &s, SUM_TOL);
            on.check(
                &format!("softmax_vjp {label}"),
                on.upload(&s_rounded).softmax_vjp(&on.upload(&grad), axis),
                &dx,
                SUM_TOL,
            );
        });
    }
}

/// Shapes and axes for the operations along one axis: the channels of NCHW (strided), the last
/// axis, a long axis, and an axis of length 1.
const ALONG_AXIS_CASES: [(&[usize], usize); 4] = [(&[2, 5, 3, 4], 1), (&[3, 4, 7], 2), (&[2, 300], 1), (&[4, 1, 3], 1)];

/// The flat indices of every line along `axis` of a row-major tensor of `dims`.
fn lines_along(dims: &[usize], axis: usize) -> Vec<Vec<usize>> {
    let (len, inner) = (dims[axis], dims[axis + 1..].iter().product::<usize>());
    let outer = dims[..axis].iter().product::<usize>();
    (0..outer)
        .flat_map(|o| (0..inner).map(move |k| (0..len).map(|j| (o * len + j) * inner + k).collect()))
        .collect()
}

/// Slices and concatenations along the channels and a later axis (axis 0 is `narrow_rows` /
/// `cat_rows`, checked above): exact copies.
#[test]
fn narrow_and_cat_along_an_axis() {
    let mut rng = Rng::new(62);
    for (dims, axis) in [([2usize, 6, 3, 5], 1usize), ([3, 4, 9, 2], 2), ([2, 5, 4, 7], 3)] {
        let x = Host::random(&mut rng, &dims);
        let strides: Vec<usize> = (0..4).map(|k| dims[k + 1..].iter().product()).collect();
        let index = |at: [usize; 4]| (0..4).map(|k| at[k] * strides[k]).sum::<usize>();
        // Every element of x, in row-major order, as it appears in slice `start..start + len`.
        let slice = |start: usize, len: usize| {
            let mut out_dims = dims;
            out_dims[axis] = len;
            let mut data = Vec::new();
            for a in 0..out_dims[0] {
                for b in 0..out_dims[1] {
                    for c in 0..out_dims[2] {
                        for d in 0..out_dims[3] {
                            let mut at = [a, b, c, d];
                            at[axis] += start;
                            data.push(x.data[index(at)]);
                        }
                    }
                }
            }
            Host::new(&out_dims, data)
        };
        let cut = dims[axis] / 3 + 1;
        let (head, tail) = (slice(0, cut), slice(cut, dims[axis] - cut));
        let middle = slice(1, dims[axis] - 2);
        on_every_device(|on| {
            let label = format!("of {dims:?} along axis {axis}");
            let tx = on.upload(&x);
            on.check(
                &format!("narrow {label}"),
                tx.narrow(axis, 1, dims[axis] - 2),
                &Reference::copy(&middle),
                0.0,
            );
            let parts = [on.upload(&head), on.upload(&tail)];
            on.check(
                &format!("cat {label}"),
                Tensor::cat(&parts, axis),
                &Reference::copy(&x),
                0.0,
            );
        });
    }
}
