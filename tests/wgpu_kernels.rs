//! Every wgpu kernel against a naive CPU reference written here.
#![cfg(feature = "wgpu")]

use std::sync::OnceLock;

use candle_xai::backend::wgpu::{WgpuDevice, WgpuTensor};
use candle_xai::backend::{Activation, BackendStorage, Map, Reduce, WindowBins, Zip};
use candle_xai::layers::{PoolWindow, WindowGeometry};

fn device() -> &'static WgpuDevice {
    static DEVICE: OnceLock<WgpuDevice> = OnceLock::new();
    DEVICE.get_or_init(|| {
        let d = WgpuDevice::new().expect("a wgpu adapter (lavapipe is enough)");
        eprintln!("testing on {d:?}");
        d
    })
}

/// xorshift64*: deterministic inputs without a dependency.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// Uniform in [-1, 1).
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let bits = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40;
        bits as f32 / (1u64 << 23) as f32 - 1.0
    }

    fn vec(&mut self, len: usize) -> Vec<f32> {
        (0..len).map(|_| self.next()).collect()
    }
}

fn upload(data: &[f32], dims: &[usize]) -> WgpuTensor {
    device().upload(data, dims).unwrap()
}

fn random(rng: &mut Rng, dims: &[usize]) -> (Vec<f32>, WgpuTensor) {
    let data = rng.vec(dims.iter().product());
    let t = upload(&data, dims);
    (data, t)
}

#[track_caller]
fn assert_close(got: &WgpuTensor, want: &[f32], want_dims: &[usize]) {
    assert_eq!(got.dims(), want_dims, "shape");
    let got = got.to_vec().unwrap();
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-30);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let err = (g - w).abs();
        assert!(
            err <= 1e-5 * scale,
            "element {i}: got {g}, want {w} (max |ref| {scale})"
        );
    }
}

// ---------------------------------------------------------------- element-wise

type Unary = fn(f32) -> f32;
type Binary = fn(f32, f32) -> f32;

#[test]
fn map_ops() {
    let mut rng = Rng::new(1);
    // Spread past ReLU6's kink at 6 and include exact zeros for the sign conventions.
    let mut x: Vec<f32> = rng.vec(1000).into_iter().map(|v| v * 8.0).collect();
    x[3] = 0.0;
    x[10] = 6.0;
    let t = upload(&x, &[10, 100]);
    let ops: Vec<(Map, Unary)> = vec![
        (Map::Affine { mul: 1.5, add: -0.25 }, |v| v * 1.5 - 0.25),
        (Map::Abs, f32::abs),
        (Map::Sqr, |v| v * v),
        (Map::Clamp { low: -2.0, high: 3.0 }, |v: f32| v.clamp(-2.0, 3.0)),
        (Map::Stabilize { epsilon: 0.1 }, |v| {
            v + if v >= 0.0 { 0.1 } else { -0.1 }
        }),
        (Map::PositiveMask, |v| (v > 0.0) as u8 as f32),
        (Map::NegativeMask, |v| (v < 0.0) as u8 as f32),
        (Map::Fill { value: 2.5 }, |_| 2.5),
    ];
    for (op, f) in ops {
        let want: Vec<f32> = x.iter().map(|&v| f(v)).collect();
        assert_close(&t.map(op).unwrap(), &want, &[10, 100]);
    }
    for act in [
        Activation::Relu,
        Activation::Relu6,
        Activation::LeakyRelu { negative_slope: 0.01 },
    ] {
        let want: Vec<f32> = x.iter().map(|&v| act.value(v)).collect();
        assert_close(&t.map(Map::Activation(act)).unwrap(), &want, &[10, 100]);
    }
}

#[test]
fn map_large_folds_the_dispatch() {
    // 65535 * 256 elements is the most one dispatch dimension holds; go past it.
    let len = 65535 * 256 + 1000;
    let x: Vec<f32> = (0..len).map(|i| (i % 1000) as f32).collect();
    let t = upload(&x, &[len]);
    let want: Vec<f32> = x.iter().map(|v| v * 2.0 + 1.0).collect();
    assert_close(&t.map(Map::Affine { mul: 2.0, add: 1.0 }).unwrap(), &want, &[len]);
}

#[test]
fn zip_ops() {
    let mut rng = Rng::new(2);
    let mut a: Vec<f32> = rng.vec(777).into_iter().map(|v| v * 8.0).collect();
    a[0] = 0.0;
    a[1] = 6.0;
    let b: Vec<f32> = rng.vec(777).into_iter().map(|v| v + 2.0).collect();
    let (ta, tb) = (upload(&a, &[7, 111]), upload(&b, &[7, 111]));
    let ops: Vec<(Zip, Binary)> = vec![
        (Zip::Add, |u, v| u + v),
        (Zip::Sub, |u, v| u - v),
        (Zip::Mul, |u, v| u * v),
        (Zip::Div, |u, v| u / v),
    ];
    for (op, f) in ops {
        let want: Vec<f32> = a.iter().zip(&b).map(|(&u, &v)| f(u, v)).collect();
        assert_close(&ta.zip(&tb, op).unwrap(), &want, &[7, 111]);
    }
    for act in [
        Activation::Relu,
        Activation::Relu6,
        Activation::LeakyRelu { negative_slope: 0.2 },
    ] {
        let want: Vec<f32> = a.iter().zip(&b).map(|(&x, &g)| g * act.derivative(x)).collect();
        assert_close(&ta.zip(&tb, Zip::ActivationVjp(act)).unwrap(), &want, &[7, 111]);
    }
}

#[test]
fn channel_affine_shared_and_per_sample() {
    let mut rng = Rng::new(3);
    let (n, c, inner) = (3, 5, 6);
    for dims in [vec![n, c, 2, 3], vec![n, c]] {
        let inner = if dims.len() == 2 { 1 } else { inner };
        let (x, tx) = random(&mut rng, &dims);
        for per_sample in [false, true] {
            let table_dims = if per_sample { vec![n, c] } else { vec![c] };
            let (s, ts) = random(&mut rng, &table_dims);
            let (b, tb) = random(&mut rng, &table_dims);
            let at = |t: &[f32], i: usize| t[if per_sample { i / inner } else { (i / inner) % c }];
            for (use_s, use_b) in [(true, true), (true, false), (false, true)] {
                let want: Vec<f32> = (0..x.len())
                    .map(|i| {
                        let v = if use_s { x[i] * at(&s, i) } else { x[i] };
                        if use_b {
                            v + at(&b, i)
                        } else {
                            v
                        }
                    })
                    .collect();
                let got = tx.channel_affine(use_s.then_some(&ts), use_b.then_some(&tb)).unwrap();
                assert_close(&got, &want, &dims);
            }
        }
    }
}

#[test]
fn reductions() {
    let mut rng = Rng::new(4);
    let (n, c, h, w) = (3, 5, 40, 41);
    let (x, t) = random(&mut rng, &[n, c, h, w]);
    let mean: Vec<f32> = x
        .chunks(h * w)
        .map(|p| p.iter().sum::<f32>() / (h * w) as f32)
        .collect();
    assert_close(&t.reduce(Reduce::MeanHw).unwrap(), &mean, &[n, c, 1, 1]);
    let per_sample: Vec<f32> = x.chunks(c * h * w).map(|p| p.iter().sum()).collect();
    assert_close(&t.reduce(Reduce::SumPerSample).unwrap(), &per_sample, &[n]);
    let mut channels = vec![0f32; n * h * w];
    for (i, v) in x.iter().enumerate() {
        channels[(i / (c * h * w)) * h * w + i % (h * w)] += v;
    }
    assert_close(&t.reduce(Reduce::SumChannels).unwrap(), &channels, &[n, 1, h, w]);
    // Rank 2: [N, C] -> [N, 1] has no trailing dimensions to keep.
    let (x2, t2) = random(&mut rng, &[4, 300]);
    let sums: Vec<f32> = x2.chunks(300).map(|p| p.iter().sum()).collect();
    assert_close(&t2.reduce(Reduce::SumChannels).unwrap(), &sums, &[4, 1]);
}

#[test]
fn reshape_narrow_cat() {
    let mut rng = Rng::new(5);
    let (x, t) = random(&mut rng, &[5, 3, 2]);
    assert_close(&t.reshape(&[5, 6]).unwrap(), &x, &[5, 6]);
    assert!(t.reshape(&[7]).is_err());
    assert_close(&t.narrow_rows(1, 3).unwrap(), &x[6..24], &[3, 3, 2]);
    assert!(t.narrow_rows(4, 2).is_err());
    assert!(upload(&[1.0], &[]).narrow_rows(0, 0).is_err());
    let (y, u) = random(&mut rng, &[2, 3, 2]);
    let cat = WgpuTensor::cat_rows(&[&t, &u, &t.narrow_rows(0, 1).unwrap()]).unwrap();
    let want: Vec<f32> = x.iter().chain(&y).chain(&x[..6]).copied().collect();
    assert_close(&cat, &want, &[8, 3, 2]);
    let empty = t.narrow_rows(2, 0).unwrap();
    assert_eq!(empty.to_vec().unwrap(), Vec::<f32>::new());
}

// ---------------------------------------------------------------- matmul

#[test]
fn long_chains_keep_their_order() {
    // Operations are submitted in batches: a chain far longer than one batch, with copies
    // among the dispatches, must still run in the order it was recorded.
    let x: Vec<f32> = (0..600).map(|i| i as f32).collect();
    let mut t = upload(&x, &[6, 100]);
    for step in 0..300 {
        t = t.map(Map::Affine { mul: 1.0, add: 1.0 }).unwrap();
        if step % 50 == 0 {
            let (head, tail) = (t.narrow_rows(0, 2).unwrap(), t.narrow_rows(2, 4).unwrap());
            t = WgpuTensor::cat_rows(&[&head, &tail]).unwrap();
        }
    }
    let want: Vec<f32> = x.iter().map(|v| v + 300.0).collect();
    assert_close(&t, &want, &[6, 100]);
}

#[test]
fn matmul_ragged_tiles() {
    let mut rng = Rng::new(6);
    for (m, k, n) in [(37, 53, 29), (1, 1, 1), (130, 70, 65), (3, 200, 2)] {
        let (a, ta) = random(&mut rng, &[m, k]);
        let (b, tb) = random(&mut rng, &[k, n]);
        let mut want = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                want[i * n + j] = (0..k).map(|l| a[i * k + l] * b[l * n + j]).sum();
            }
        }
        assert_close(&ta.matmul(&tb, false).unwrap(), &want, &[m, n]);
        let bt: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
        assert_close(&ta.matmul(&upload(&bt, &[n, k]), true).unwrap(), &want, &[m, n]);
    }
    let (_, ta) = random(&mut rng, &[3, 4]);
    assert!(ta.matmul(&ta, false).is_err());
}

// ---------------------------------------------------------------- convolution

struct ConvCase {
    n: usize,
    cin: usize,
    hw: (usize, usize),
    cout: usize,
    g: WindowGeometry,
}

fn conv_ref(c: &ConvCase, x: &[f32], k: &[f32]) -> (Vec<f32>, (usize, usize)) {
    let (h, w) = c.hw;
    let (kh, kw) = c.g.kernel;
    let (ho, wo) = c.g.output_hw(c.hw).unwrap();
    let (cin_g, cout_g) = (c.cin / c.g.groups, c.cout / c.g.groups);
    let (top, _, left, _) = c.g.padding;
    let mut y = vec![0f32; c.n * c.cout * ho * wo];
    for n in 0..c.n {
        for co in 0..c.cout {
            let grp = co / cout_g;
            for oh in 0..ho {
                for ow in 0..wo {
                    let mut acc = 0f32;
                    for cl in 0..cin_g {
                        for ki in 0..kh {
                            for kj in 0..kw {
                                let ih = (oh * c.g.stride + ki * c.g.dilation) as isize - top as isize;
                                let iw = (ow * c.g.stride + kj * c.g.dilation) as isize - left as isize;
                                if ih < 0 || iw < 0 || ih >= h as isize || iw >= w as isize {
                                    continue;
                                }
                                let ci = grp * cin_g + cl;
                                acc += x[((n * c.cin + ci) * h + ih as usize) * w + iw as usize]
                                    * k[((co * cin_g + cl) * kh + ki) * kw + kj];
                            }
                        }
                    }
                    y[((n * c.cout + co) * ho + oh) * wo + ow] = acc;
                }
            }
        }
    }
    (y, (ho, wo))
}

/// The adjoint of `conv_ref`, by scattering: independent of the kernels' gather.
fn conv_transposed_ref(c: &ConvCase, grad: &[f32], k: &[f32]) -> Vec<f32> {
    let (h, w) = c.hw;
    let (kh, kw) = c.g.kernel;
    let (ho, wo) = c.g.output_hw(c.hw).unwrap();
    let (cin_g, cout_g) = (c.cin / c.g.groups, c.cout / c.g.groups);
    let (top, _, left, _) = c.g.padding;
    let mut dx = vec![0f32; c.n * c.cin * h * w];
    for n in 0..c.n {
        for co in 0..c.cout {
            let grp = co / cout_g;
            for oh in 0..ho {
                for ow in 0..wo {
                    let g = grad[((n * c.cout + co) * ho + oh) * wo + ow];
                    for cl in 0..cin_g {
                        for ki in 0..kh {
                            for kj in 0..kw {
                                let ih = (oh * c.g.stride + ki * c.g.dilation) as isize - top as isize;
                                let iw = (ow * c.g.stride + kj * c.g.dilation) as isize - left as isize;
                                if ih < 0 || iw < 0 || ih >= h as isize || iw >= w as isize {
                                    continue;
                                }
                                let ci = grp * cin_g + cl;
                                dx[((n * c.cin + ci) * h + ih as usize) * w + iw as usize] +=
                                    g * k[((co * cin_g + cl) * kh + ki) * kw + kj];
                            }
                        }
                    }
                }
            }
        }
    }
    dx
}

fn check_conv(c: ConvCase, seed: u64) {
    let mut rng = Rng::new(seed);
    let (x, tx) = random(&mut rng, &[c.n, c.cin, c.hw.0, c.hw.1]);
    let kdims = [c.cout, c.cin / c.g.groups, c.g.kernel.0, c.g.kernel.1];
    let (k, tk) = random(&mut rng, &kdims);
    let (want, (ho, wo)) = conv_ref(&c, &x, &k);
    assert_close(&tx.conv2d(&tk, &c.g).unwrap(), &want, &[c.n, c.cout, ho, wo]);
    let (grad, tgrad) = random(&mut rng, &[c.n, c.cout, ho, wo]);
    let want_dx = conv_transposed_ref(&c, &grad, &k);
    assert_close(
        &tgrad.conv2d_transposed(&tk, &c.g, c.hw).unwrap(),
        &want_dx,
        &[c.n, c.cin, c.hw.0, c.hw.1],
    );
}

fn geom(
    kernel: (usize, usize),
    stride: usize,
    dilation: usize,
    padding: (usize, usize, usize, usize),
    groups: usize,
) -> WindowGeometry {
    WindowGeometry {
        kernel,
        stride,
        dilation,
        padding,
        groups,
    }
}

#[test]
fn conv_stride2_odd_sizes() {
    check_conv(
        ConvCase {
            n: 2,
            cin: 3,
            hw: (7, 9),
            cout: 5,
            g: geom((3, 3), 2, 1, (1, 1, 1, 1), 1),
        },
        10,
    );
    check_conv(
        ConvCase {
            n: 1,
            cin: 3,
            hw: (7, 9),
            cout: 5,
            g: geom((3, 3), 2, 1, (0, 0, 0, 0), 1),
        },
        11,
    );
}

#[test]
fn conv_dilation_asymmetric_padding() {
    check_conv(
        ConvCase {
            n: 2,
            cin: 4,
            hw: (9, 8),
            cout: 6,
            g: geom((3, 2), 1, 2, (0, 2, 1, 3), 1),
        },
        12,
    );
    check_conv(
        ConvCase {
            n: 1,
            cin: 2,
            hw: (10, 11),
            cout: 3,
            g: geom((3, 3), 3, 2, (2, 1, 0, 2), 1),
        },
        13,
    );
}

#[test]
fn conv_groups() {
    check_conv(
        ConvCase {
            n: 2,
            cin: 8,
            hw: (6, 7),
            cout: 12,
            g: geom((3, 3), 1, 1, (1, 1, 1, 1), 4),
        },
        14,
    );
    check_conv(
        ConvCase {
            n: 1,
            cin: 8,
            hw: (9, 9),
            cout: 16,
            g: geom((3, 3), 2, 1, (1, 0, 1, 0), 8),
        },
        15,
    );
}

#[test]
fn conv_depthwise() {
    check_conv(
        ConvCase {
            n: 2,
            cin: 6,
            hw: (7, 9),
            cout: 6,
            g: geom((3, 3), 2, 1, (1, 1, 1, 1), 6),
        },
        16,
    );
    check_conv(
        ConvCase {
            n: 1,
            cin: 5,
            hw: (11, 10),
            cout: 5,
            g: geom((5, 3), 1, 2, (3, 1, 0, 2), 5),
        },
        17,
    );
}

#[test]
fn conv_1x1_and_larger_than_a_tile() {
    check_conv(
        ConvCase {
            n: 2,
            cin: 16,
            hw: (5, 5),
            cout: 70,
            g: geom((1, 1), 1, 1, (0, 0, 0, 0), 1),
        },
        18,
    );
    check_conv(
        ConvCase {
            n: 3,
            cin: 20,
            hw: (13, 11),
            cout: 33,
            g: geom((3, 3), 1, 1, (1, 1, 1, 1), 1),
        },
        19,
    );
    check_conv(
        ConvCase {
            n: 1,
            cin: 3,
            hw: (17, 19),
            cout: 130,
            g: geom((7, 7), 2, 1, (3, 3, 3, 3), 1),
        },
        20,
    );
}

/// The input-VJP runs as a GEMM from 16 input channels per group (smaller ones gather), so
/// these cases keep at least 16 and cover its stride phases and tile edges.
#[test]
fn conv_vjp_gemm_ragged_tiles_and_stride_phases() {
    // 67 input channels per group: a full and a ragged 64-channel tile; 19 output channels
    // per group: a reduction that is no multiple of the 16-deep slices.
    check_conv(
        ConvCase {
            n: 2,
            cin: 134,
            hw: (9, 10),
            cout: 38,
            g: geom((3, 3), 2, 1, (1, 0, 2, 1), 2),
        },
        21,
    );
    // 1x1 stride 2: odd rows and columns receive no gradient at all.
    check_conv(
        ConvCase {
            n: 2,
            cin: 16,
            hw: (9, 7),
            cout: 24,
            g: geom((1, 1), 2, 1, (0, 0, 0, 0), 1),
        },
        22,
    );
    // Dilation 2 with stride 2: every tap lands on even offsets, so one phase per axis is empty.
    check_conv(
        ConvCase {
            n: 1,
            cin: 17,
            hw: (11, 12),
            cout: 5,
            g: geom((3, 3), 2, 2, (2, 1, 2, 2), 1),
        },
        23,
    );
    // Stride 4, dilation 2 (taps every other step) and stride 3, dilation 2 (every third).
    check_conv(
        ConvCase {
            n: 2,
            cin: 18,
            hw: (13, 11),
            cout: 3,
            g: geom((5, 3), 4, 2, (3, 0, 1, 2), 1),
        },
        24,
    );
    check_conv(
        ConvCase {
            n: 1,
            cin: 40,
            hw: (14, 13),
            cout: 6,
            g: geom((5, 4), 3, 2, (1, 2, 3, 0), 2),
        },
        25,
    );
}

#[test]
fn conv_vjp_gemm_folds_the_dispatch() {
    // Stride 300 makes 90000 stride phases per sample, nearly all of them without pixels:
    // more workgroups than one dimension holds, yet cheap. Rows 0 and 1 each take one tap,
    // row 2 none (it must still be written, as zero).
    check_conv(
        ConvCase {
            n: 2,
            cin: 16,
            hw: (3, 2),
            cout: 3,
            g: geom((2, 1), 300, 1, (0, 0, 0, 0), 1),
        },
        26,
    );
}

// ---------------------------------------------------------------- pooling

/// PyTorch's max pooling: the first maximum of each window's valid cells, and its index.
fn max_pool_ref(x: &[f32], (planes, h, w): (usize, usize, usize), p: &PoolWindow) -> (Vec<f32>, Vec<usize>) {
    let (ho, wo) = p.output_hw((h, w)).unwrap();
    let mut y = Vec::new();
    let mut idx = Vec::new();
    for pl in 0..planes {
        for oh in 0..ho {
            for ow in 0..wo {
                let mut best: Option<(f32, usize)> = None;
                for ki in 0..p.kernel.0 {
                    for kj in 0..p.kernel.1 {
                        let ih = (oh * p.stride.0 + ki * p.dilation.0) as isize - p.padding.0 as isize;
                        let iw = (ow * p.stride.1 + kj * p.dilation.1) as isize - p.padding.1 as isize;
                        if ih < 0 || iw < 0 || ih >= h as isize || iw >= w as isize {
                            continue;
                        }
                        let i = pl * h * w + ih as usize * w + iw as usize;
                        if best.is_none_or(|(b, _)| x[i] > b) {
                            best = Some((x[i], i));
                        }
                    }
                }
                let (v, i) = best.unwrap();
                y.push(v);
                idx.push(i);
            }
        }
    }
    (y, idx)
}

fn check_max_pool(dims: [usize; 4], p: PoolWindow, x: Vec<f32>, seed: u64) {
    let [n, c, h, w] = dims;
    let tx = upload(&x, &dims);
    let (y, idx) = max_pool_ref(&x, (n * c, h, w), &p);
    let (ho, wo) = p.output_hw((h, w)).unwrap();
    assert_close(&tx.max_pool(&p).unwrap(), &y, &[n, c, ho, wo]);
    let mut rng = Rng::new(seed);
    let (g, tg) = random(&mut rng, &[n, c, ho, wo]);
    let mut dx = vec![0f32; x.len()];
    for (gi, &i) in g.iter().zip(&idx) {
        dx[i] += gi;
    }
    assert_close(&tx.max_pool_vjp(&tg, &p).unwrap(), &dx, &dims);
}

fn pool(
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

#[test]
fn max_pool_padding_dilation_ceil() {
    let mut rng = Rng::new(30);
    let cases = [
        ([2, 3, 7, 9], pool((3, 3), (2, 2), (1, 1), (1, 1), true)),
        ([1, 2, 10, 11], pool((3, 3), (2, 2), (1, 1), (2, 2), true)),
        ([2, 2, 6, 6], pool((2, 2), (2, 2), (0, 0), (1, 1), false)),
        ([1, 3, 8, 9], pool((3, 2), (2, 1), (1, 1), (1, 2), true)),
        ([1, 1, 5, 5], pool((2, 2), (3, 3), (1, 0), (1, 1), true)),
    ];
    for (i, (dims, p)) in cases.into_iter().enumerate() {
        let x = rng.vec(dims.iter().product());
        check_max_pool(dims, p, x, 31 + i as u64);
    }
}

#[test]
fn max_pool_ties_go_to_the_first_cell() {
    let dims = [1, 2, 7, 7];
    let p = pool((3, 3), (2, 2), (1, 1), (1, 1), true);
    check_max_pool(dims, p, vec![0.5; 98], 40);
    // Overlapping windows all pick their own first cell, including windows starting in padding.
    let tx = upload(&[1.0; 16], &[1, 1, 4, 4]);
    let p = pool((2, 2), (1, 1), (0, 0), (1, 1), false);
    let dx = tx
        .max_pool_vjp(&upload(&[1.0; 9], &[1, 1, 3, 3]), &p)
        .unwrap()
        .to_vec()
        .unwrap();
    let want = [1., 1., 1., 0., 1., 1., 1., 0., 1., 1., 1., 0., 0., 0., 0., 0.];
    assert_eq!(dx, want);
}

fn check_window_mean(dims: [usize; 4], bins: WindowBins, seed: u64) {
    let [n, c, h, w] = dims;
    let (ho, wo) = bins.output_hw();
    let mut rng = Rng::new(seed);
    let (x, tx) = random(&mut rng, &dims);
    let mut y = vec![0f32; n * c * ho * wo];
    for pl in 0..n * c {
        for i in 0..ho {
            for j in 0..wo {
                let mut s = 0f32;
                for r in bins.rows[i].0..bins.rows[i].1 {
                    for q in bins.cols[j].0..bins.cols[j].1 {
                        s += x[(pl * h + r) * w + q];
                    }
                }
                y[(pl * ho + i) * wo + j] = s / bins.divisor(i, j);
            }
        }
    }
    assert_close(&tx.window_mean(&bins).unwrap(), &y, &[n, c, ho, wo]);
    let (g, tg) = random(&mut rng, &[n, c, ho, wo]);
    let mut dx = vec![0f32; x.len()];
    for pl in 0..n * c {
        for i in 0..ho {
            for j in 0..wo {
                for r in bins.rows[i].0..bins.rows[i].1 {
                    for q in bins.cols[j].0..bins.cols[j].1 {
                        dx[(pl * h + r) * w + q] += g[(pl * ho + i) * wo + j] / bins.divisor(i, j);
                    }
                }
            }
        }
    }
    assert_close(&tg.window_mean_vjp(&bins).unwrap(), &dx, &dims);
}

fn adaptive(len: usize, out: usize) -> Vec<(usize, usize)> {
    (0..out)
        .map(|i| (i * len / out, ((i + 1) * len).div_ceil(out)))
        .collect()
}

fn counts(bins: &[(usize, usize)]) -> Vec<usize> {
    bins.iter().map(|(a, b)| b - a).collect()
}

#[test]
fn window_mean_adaptive_and_override() {
    let (rows, cols) = (adaptive(7, 3), adaptive(9, 4));
    let bins = WindowBins {
        input_hw: (7, 9),
        row_counts: counts(&rows),
        col_counts: counts(&cols),
        rows,
        cols,
        divisor_override: None,
    };
    check_window_mean([2, 3, 7, 9], bins.clone(), 50);
    check_window_mean(
        [2, 3, 7, 9],
        WindowBins {
            divisor_override: Some(5),
            ..bins
        },
        51,
    );
    // Average pooling k3 s2 p1 with count_include_pad: bins clipped to the input, counts not.
    let clipped = |len: usize| -> (Vec<(usize, usize)>, Vec<usize>) {
        let out = (len + 2 - 3) / 2 + 1;
        let bins = (0..out)
            .map(|i| ((2 * i).saturating_sub(1), (2 * i + 2).min(len)))
            .collect();
        (bins, vec![3; out])
    };
    let ((rows, row_counts), (cols, col_counts)) = (clipped(8), clipped(11));
    let bins = WindowBins {
        input_hw: (8, 11),
        rows,
        cols,
        row_counts,
        col_counts,
        divisor_override: None,
    };
    check_window_mean([1, 2, 8, 11], bins, 52);
    // Global average pooling: one bin covering everything.
    let bins = WindowBins {
        input_hw: (5, 6),
        rows: vec![(0, 5)],
        cols: vec![(0, 6)],
        row_counts: vec![5],
        col_counts: vec![6],
        divisor_override: None,
    };
    check_window_mean([3, 4, 5, 6], bins, 53);
}

// ---------------------------------------------------------------- errors and timing

#[test]
fn oversized_and_mismatched_inputs_are_errors() {
    let t = upload(&[1.0; 6], &[2, 3]);
    assert!(device().upload(&[1.0; 5], &[2, 3]).is_err());
    assert!(t.zip(&upload(&[1.0; 4], &[4]), Zip::Add).is_err());
    assert!(t.max_pool(&pool((2, 2), (1, 1), (0, 0), (1, 1), false)).is_err());
    let k = upload(&[1.0; 9], &[1, 1, 3, 3]);
    assert!(t.conv2d(&k, &geom((3, 3), 1, 1, (0, 0, 0, 0), 1)).is_err());
    // Past 4 GiB no device binds a storage buffer: the check must fail before wgpu does.
    let big = upload(&vec![0.0; 1 << 20], &[1, 1 << 20]);
    let parts = vec![&big; 1100];
    let err = WgpuTensor::cat_rows(&parts).unwrap_err();
    assert!(err.to_string().contains("limit"), "{err}");
}

/// `cargo test --release -- --ignored --nocapture timing` prints rough kernel timings.
#[test]
#[ignore]
fn timing() {
    use std::time::Instant;
    let mut rng = Rng::new(99);
    let cases = [
        (
            "1x64x56x56 3x3 conv",
            [1, 64, 56, 56],
            64,
            geom((3, 3), 1, 1, (1, 1, 1, 1), 1),
        ),
        (
            "1x64x56x56 3x3 depthwise",
            [1, 64, 56, 56],
            64,
            geom((3, 3), 1, 1, (1, 1, 1, 1), 64),
        ),
        (
            "1x3x224x224 7x7/2 stem conv",
            [1, 3, 224, 224],
            64,
            geom((7, 7), 2, 1, (3, 3, 3, 3), 1),
        ),
        (
            "1x256x14x14 3x3 conv",
            [1, 256, 14, 14],
            256,
            geom((3, 3), 1, 1, (1, 1, 1, 1), 1),
        ),
    ];
    for (name, dims, cout, g) in cases {
        let (_, x) = random(&mut rng, &dims);
        let (_, k) = random(&mut rng, &[cout, dims[1] / g.groups, g.kernel.0, g.kernel.1]);
        let y = x.conv2d(&k, &g).unwrap();
        y.to_vec().unwrap();
        let (_, grad) = random(&mut rng, y.dims());
        grad.conv2d_transposed(&k, &g, (dims[2], dims[3]))
            .unwrap()
            .to_vec()
            .unwrap();
        let reps = 5;
        let t0 = Instant::now();
        for _ in 0..reps {
            x.conv2d(&k, &g).unwrap().to_vec().unwrap();
        }
        let fwd = t0.elapsed() / reps;
        let t0 = Instant::now();
        for _ in 0..reps {
            grad.conv2d_transposed(&k, &g, (dims[2], dims[3]))
                .unwrap()
                .to_vec()
                .unwrap();
        }
        let bwd = t0.elapsed() / reps;
        eprintln!(
            "{name} on {:?}: forward {fwd:?}, input-VJP {bwd:?} (incl. readback)",
            device()
        );
    }
    // A model's pass is mostly small operations: what each costs beyond its kernel.
    let (_, small) = random(&mut rng, &[64, 64]);
    let ops = 1000;
    let t0 = Instant::now();
    let mut t = small.clone();
    for _ in 0..ops {
        t = t.map(Map::Affine { mul: 1.0, add: 0.5 }).unwrap();
    }
    let recorded = t0.elapsed();
    t.to_vec().unwrap();
    eprintln!(
        "{ops} chained 64x64 maps: {:?} per op on the host, {:?} per op until read back",
        recorded / ops,
        t0.elapsed() / ops
    );
    let (_, a) = random(&mut rng, &[512, 512]);
    a.matmul(&a, false).unwrap().to_vec().unwrap();
    let t0 = Instant::now();
    for _ in 0..5 {
        a.matmul(&a, false).unwrap().to_vec().unwrap();
    }
    eprintln!("512^3 matmul: {:?}", t0.elapsed() / 5);
}
