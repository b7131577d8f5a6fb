//! A GPU whose storage buffers are smaller than a model needs (a browser may grant only
//! WebGPU's default 128 MiB, less than VGG's first classifier weight): Integrated Gradients
//! and SmoothGrad split their passes to fit, weights too large for one buffer are split by
//! rows across several, and every method gives the CPU's result. What cannot be split (a
//! single row larger than a buffer, a convolution kernel larger than a buffer) is refused
//! with a message that names the limit.
#![cfg(feature = "wgpu")]

mod common;

use candle_xai::backend::wgpu::WgpuDevice;
use candle_xai::layers::WindowGeometry;
use candle_xai::methods::*;
use candle_xai::{Device, Request, Targets};
use common::{assert_close, explain_refs, mnist_cpu, mnist_model, REL_TOL};

/// The MNIST VGG's widest activation row is 16×28×28 f32 (49 KiB): a pass of 16 rows needs
/// 784 KiB per tensor, 4 rows (one copy of the four-digit batch) 196 KiB.
const SMALL_BUFFERS: u64 = 256 * 1024;

/// Smaller than classifier.1.weight ([64, 288], 72 KiB), which is split into two buffers of
/// 56 and 8 rows, and than a four-digit batch's activations, so the test explains one digit.
/// Not much smaller: a command batch's uniform block (32 KiB) is bounded by it too.
const TINY_BUFFERS: u64 = 64 * 1024;

#[test]
fn multi_pass_methods_split_their_passes_to_fit_small_buffers() {
    let small = Device::Wgpu(WgpuDevice::with_max_buffer_bytes(SMALL_BUFFERS).unwrap());
    let (gpu, refs) = mnist_model("vgg", &small);
    let (cpu, _) = mnist_model("vgg", &Device::cpu());
    let methods = [
        Method::IntegratedGradients(IntegratedGradientsParams {
            n_steps: 8,
            batch_size: Some(16),
            ..Default::default()
        }),
        Method::SmoothGrad(SmoothGradParams {
            n_samples: 6,
            batch_size: Some(16),
            ..Default::default()
        }),
    ];
    for method in methods {
        let name = method.name();
        let ours = explain_refs(&gpu, &refs, method.clone(), None);
        let reference = explain_refs(&cpu, &refs, method, None);
        assert_close(&name, &ours.attributions, &reference.attributions, REL_TOL);
    }
}

#[test]
fn weights_larger_than_a_buffer_are_split_and_every_method_matches_the_cpu() {
    let tiny = Device::Wgpu(WgpuDevice::with_max_buffer_bytes(TINY_BUFFERS).unwrap());
    let (gpu, refs) = mnist_model("vgg", &tiny);
    let (cpu, _) = mnist_model("vgg", &Device::cpu());
    let digit = refs.f32("inputs").narrow(0, 0, 1).unwrap();
    let target = refs.targets()[..1].to_vec();
    for name in Method::applicable_to(&cpu) {
        let method = match Method::from_name(name).unwrap() {
            // Fewer passes than the defaults: each is one digit here.
            Method::IntegratedGradients(p) => {
                Method::IntegratedGradients(IntegratedGradientsParams { n_steps: 6, ..p })
            }
            Method::SmoothGrad(p) => Method::SmoothGrad(SmoothGradParams { n_samples: 4, ..p }),
            other => other,
        };
        let request = Request {
            method,
            targets: Targets::Classes(target.clone()),
            layer: None,
            memory_limit: None,
            share: None,
        };
        let explain = |model| candle_xai::explain(model, &digit, &request, &mut Progress::none());
        let ours = explain(&gpu).unwrap_or_else(|e| panic!("{name} on 64 KiB buffers: {e}"));
        let reference = explain(&cpu).unwrap();
        assert_close(name, &ours.attributions, &reference.attributions, REL_TOL);
        assert_close(&format!("{name} logits"), &ours.logits, &reference.logits, REL_TOL);
    }
}

#[test]
fn split_tensors_copy_and_map_like_whole_ones() {
    let tiny = Device::Wgpu(WgpuDevice::with_max_buffer_bytes(TINY_BUFFERS).unwrap());
    let cpu = Device::cpu();
    // 40 rows of 1000 f32: 16 rows per 64 KiB buffer, so pieces of 16, 16 and 8 rows.
    let (rows, cols) = (40, 1000);
    let data: Vec<f32> = (0..rows * cols)
        .map(|i| ((i * 7919) % 1013) as f32 / 101.0 - 5.0)
        .collect();
    let scale: Vec<f32> = (0..cols).map(|i| i as f32 / 500.0 - 1.0).collect();
    let lhs: Vec<f32> = (0..3 * cols).map(|i| (i % 17) as f32 / 8.0 - 1.0).collect();
    let grad: Vec<f32> = (0..3 * rows).map(|i| (i % 5) as f32 - 2.0).collect();
    let check = |what: &str, op: &dyn Fn(&Device) -> candle_xai::Tensor| {
        let ours = op(&tiny).to_host().unwrap();
        let reference = op(&cpu).to_host().unwrap();
        assert_close(what, &ours, &reference, 1e-5);
    };
    let weight = |d: &Device| d.tensor(&data, &[rows, cols]).unwrap();
    check("upload and read back", &|d| weight(d));
    // Rows taken from split tensors come back whole (activations, which pass splitting
    // bounds, are the only tensors narrowed and concatenated).
    check("rows across pieces", &|d| weight(d).narrow_rows(10, 16).unwrap());
    check("concatenated", &|d| {
        let w = weight(d);
        candle_xai::Tensor::cat_rows(&[w.narrow_rows(30, 6).unwrap(), w.narrow_rows(12, 8).unwrap()]).unwrap()
    });
    check("map and zip", &|d| {
        let w = weight(d);
        let positive = w
            .map(candle_xai::backend::Map::Clamp {
                low: 0.0,
                high: f32::INFINITY,
            })
            .unwrap();
        w.add(&positive.affine(0.25, 0.0).unwrap()).unwrap()
    });
    check("channel affine", &|d| {
        let w = weight(d).reshape(&[rows, cols, 1]).unwrap();
        let s = d.tensor(&scale, &[cols]).unwrap();
        w.channel_affine(Some(&s), Some(&s)).unwrap()
    });
    check("matmul by split rows", &|d| {
        d.tensor(&lhs, &[3, cols]).unwrap().matmul(&weight(d), true).unwrap()
    });
    check("matmul by a split k range", &|d| {
        d.tensor(&grad, &[3, rows]).unwrap().matmul(&weight(d), false).unwrap()
    });
}

#[test]
fn what_cannot_be_split_is_refused_with_the_limit() {
    let tiny = Device::Wgpu(WgpuDevice::with_max_buffer_bytes(TINY_BUFFERS).unwrap());
    // A row of 20000 f32 (80000 bytes) cannot be split by rows.
    let err = tiny.tensor(&vec![0.0; 40000], &[2, 20000]).unwrap_err().to_string();
    assert!(
        err.contains("one row of 20000 f32") && err.contains("65536 bytes"),
        "{err}"
    );
    // A convolution kernel is split by rows when uploaded, but a convolution needs it whole.
    let kernel = tiny.tensor(&vec![0.0; 64 * 512], &[64, 512, 1, 1]).unwrap();
    let x = tiny.tensor(&vec![1.0; 512], &[1, 512, 1, 1]).unwrap();
    let geometry = WindowGeometry {
        kernel: (1, 1),
        stride: 1,
        dilation: 1,
        padding: (0, 0, 0, 0),
        groups: 1,
    };
    let err = x.conv2d(&kernel, &geometry).unwrap_err().to_string();
    assert!(err.contains("[64, 512, 1, 1]") && err.contains("65536 bytes"), "{err}");
    // The model's weights themselves all fit once split.
    mnist_cpu("vgg").to_device(&tiny).unwrap();
}
