//! Our convolutions sum at least as accurately as PyTorch's float32 ones, on every backend.
//!
//! A max-pool routes the gradient (and LRP's relevance) to each window's maximum; where two
//! window values differ by a few ulps, the rounding error of the convolutions before it decides
//! the winner, and a convolution that sums less accurately than PyTorch's routes more windows
//! away from the float64 route. `tests/fixtures/conv_accuracy.safetensors`
//! (`scripts/make_conv_accuracy_fixture.py`) holds each convolution's input in a deep max-pool
//! network (VGG-11-BN with the fixtures' seeded weights, a photo at 64x64, the float64 forward
//! rounded to float32) and how far PyTorch's float32 convolution of it is from float64. Here the
//! float64 reference is a plain loop written in this file; each element's error is taken
//! relative to the sum of its terms' magnitudes, sum |w x|.
//!
//! On the backends whose convolutions are ours: the CPU and wgpu. On CUDA the convolution is
//! candle's (im2col and cuBLAS), whose summation order is cuBLAS's; whether it sums as
//! accurately is for a session with a GPU to measure with this same comparison.

use candle_xai::backend::WindowGeometry;
use candle_xai::Tensor;

use crate::common::seeded_weights::weights_from_metadata;
use crate::common::{devices, fixture, Refs};

/// Ours may err on average this much more than PyTorch's: the means are over 16k-260k
/// elements each and move by about 1 % with the input. Measured on the CPU (runs of 128
/// multiply-adds, `backend/candle/im2col.rs`): 0.68-1.00x PyTorch's mean, and 1.4-2x before,
/// when the gemm crate summed runs of 512; on lavapipe (16-deep slices folded every 128 terms,
/// `tile_gemm.wgsl`) 0.69-1.03x but the first layer's, 2-4x before, when a whole reduction was
/// one run.
const MEAN_MARGIN: f64 = 1.05;
/// Where the device computes a multiply-add as a multiply and an add (Mesa's lavapipe lowers
/// WGSL's `fma` so; [`fuses_multiply_add`] finds out), each term is rounded once more. On
/// the first layer's 27-term sums that alone is 1.09x PyTorch's mean: exactly what a
/// float32 simulation of the same order without fusing gives (1.874e-8 against 1.720e-8).
const UNFUSED_MEAN_MARGIN: f64 = 1.12;
/// The largest error of one element is a rarer event; it may be this much above PyTorch's.
const MAX_MARGIN: f64 = 2.0;

struct Convolution {
    name: String,
    geometry: WindowGeometry,
    pytorch_mean: f64,
    pytorch_max: f64,
}

fn convolutions(refs: &Refs) -> Vec<Convolution> {
    let listed: Vec<serde_json::Value> = serde_json::from_str(&refs.metadata["convolutions"]).unwrap();
    listed
        .iter()
        .map(|c| {
            let padding = c["padding"].as_u64().unwrap() as usize;
            Convolution {
                name: c["name"].as_str().unwrap().to_string(),
                geometry: WindowGeometry {
                    kernel: (3, 3),
                    stride: c["stride"].as_u64().unwrap() as usize,
                    dilation: 1,
                    padding: (padding, padding, padding, padding),
                    groups: 1,
                },
                pytorch_mean: c["mean_relative_error"].as_f64().unwrap(),
                pytorch_max: c["max_relative_error"].as_f64().unwrap(),
            }
        })
        .collect()
}

/// Per output element [C_out, Ho, Wo] (one image): the float64 correlation and sum |w x|.
fn float64_reference(
    x: &[f32],
    (c, h, w): (usize, usize, usize),
    kernel: &[f32],
    c_out: usize,
    g: &WindowGeometry,
) -> Vec<(f64, f64)> {
    let (kh, kw) = g.kernel;
    let (oh, ow) = g.output_hw((h, w)).unwrap();
    let pad = g.padding.0 as isize;
    let mut out = Vec::with_capacity(c_out * oh * ow);
    for o in 0..c_out {
        for i in 0..oh {
            for j in 0..ow {
                let (mut sum, mut magnitude) = (0f64, 0f64);
                for ci in 0..c {
                    for a in 0..kh {
                        let y = (i * g.stride + a) as isize - pad;
                        if y < 0 || y >= h as isize {
                            continue;
                        }
                        for b in 0..kw {
                            let xx = (j * g.stride + b) as isize - pad;
                            if xx < 0 || xx >= w as isize {
                                continue;
                            }
                            let term = f64::from(kernel[((o * c + ci) * kh + a) * kw + b])
                                * f64::from(x[(ci * h + y as usize) * w + xx as usize]);
                            sum += term;
                            magnitude += term.abs();
                        }
                    }
                }
                out.push((sum, magnitude));
            }
        }
    }
    out
}

/// Whether `device`'s convolution fuses its multiply-adds. With a = 1 + 2^-12, the terms
/// [-(1 + 2^-11), a^2, a^2, -(1 + 2^-11)] sum (in either direction) to 2^-23 when each a^2
/// joins the sum unrounded (a^2 = 1 + 2^-11 + 2^-24 exactly), and to 0 when it is first
/// rounded to 1 + 2^-11. Over 64 filters and 32x32 pixels, so that the probe takes the kernels
/// the network's layers take.
fn fuses_multiply_add(device: &candle_xai::Device) -> bool {
    let cpu = candle_core::Device::Cpu;
    let a = 1.0 + 2f32.powi(-12);
    let exact = -(1.0 + 2f32.powi(-11));
    let planes = [1.0f32, a, a, 1.0].map(|v| vec![v; 32 * 32]).concat();
    let x = candle_core::Tensor::from_vec(planes, (1, 4, 32, 32), &cpu).unwrap();
    let filters = [exact, a, a, exact].repeat(64);
    let w = candle_core::Tensor::from_vec(filters, (64, 4, 1, 1), &cpu).unwrap();
    let pointwise = WindowGeometry {
        kernel: (1, 1),
        stride: 1,
        dilation: 1,
        padding: (0, 0, 0, 0),
        groups: 1,
    };
    let sums = device
        .upload(&x)
        .unwrap()
        .conv2d(&device.upload(&w).unwrap(), &pointwise)
        .unwrap();
    let sums = sums.to_host().unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let fused = sums.iter().filter(|&&s| s == 2f32.powi(-23)).count();
    let unfused = sums.iter().filter(|&&s| s == 0.0).count();
    assert!(
        fused == sums.len() || unfused == sums.len(),
        "{device:?}: the probe's sums are neither all fused nor all unfused ({fused} and {unfused} of {}): {:e}",
        sums.len(),
        sums[0]
    );
    fused == sums.len()
}

#[test]
fn convolutions_of_a_deep_max_pool_network_sum_as_accurately_as_pytorch() {
    let refs = Refs::load(&fixture("conv_accuracy.safetensors"));
    let vgg = Refs::load(&fixture("vgg11_bn_refs.safetensors"));
    let weights = weights_from_metadata(&vgg.metadata["weights"]);
    let convolutions = convolutions(&refs);
    assert_eq!(convolutions.len(), 8, "VGG-11 has eight convolutions");
    let cases: Vec<_> = convolutions
        .iter()
        .map(|conv| {
            let (_, shape, kernel) = weights
                .iter()
                .find(|(name, _, _)| *name == format!("{}.weight", conv.name))
                .unwrap_or_else(|| panic!("seeded weights of {}", conv.name));
            let input = refs.get(&format!("{}.input", conv.name));
            let (_, c, h, w) = input.dims4().unwrap();
            let x = input.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let reference = float64_reference(&x, (c, h, w), kernel, shape[0], &conv.geometry);
            let kernel =
                candle_core::Tensor::from_vec(kernel.clone(), shape.as_slice(), &candle_core::Device::Cpu).unwrap();
            (conv, input.clone(), kernel, reference)
        })
        .collect();
    let mut failures = Vec::new();
    let our_kernels = devices()
        .into_iter()
        .filter(|d| !matches!(d, candle_xai::Device::Candle(c) if c.is_cuda()));
    for device in our_kernels {
        let mean_margin = if fuses_multiply_add(&device) {
            MEAN_MARGIN
        } else {
            println!("{device:?} does not fuse multiply-adds");
            UNFUSED_MEAN_MARGIN
        };
        for (conv, input, kernel, reference) in &cases {
            let x = device.upload(input).unwrap();
            let k = device.upload(kernel).unwrap();
            let ours: Tensor = x.conv2d(&k, &conv.geometry).unwrap();
            let ours = ours.to_host().unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(ours.len(), reference.len(), "{} output size", conv.name);
            let relative: Vec<f64> = ours
                .iter()
                .zip(reference)
                .filter(|(_, (_, magnitude))| *magnitude > 0.0)
                .map(|(&o, &(exact, magnitude))| (f64::from(o) - exact).abs() / magnitude)
                .collect();
            let mean = relative.iter().sum::<f64>() / relative.len() as f64;
            let max = relative.iter().cloned().fold(0.0, f64::max);
            println!(
                "{} on {device:?}: mean relative error {mean:.3e} ({:.2}x PyTorch's), max {max:.3e} ({:.2}x)",
                conv.name,
                mean / conv.pytorch_mean,
                max / conv.pytorch_max
            );
            if mean > mean_margin * conv.pytorch_mean || max > MAX_MARGIN * conv.pytorch_max {
                failures.push(format!(
                    "{} on {device:?}: our float32 convolution errs {mean:.3e} on average and {max:.3e} at most \
                     (relative to sum |w x|), PyTorch's {:.3e} and {:.3e}",
                    conv.name, conv.pytorch_mean, conv.pytorch_max
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "less accurate than PyTorch:\n{}",
        failures.join("\n")
    );
}
