//! A GPU whose storage buffers are smaller than a pass needs (a browser may grant only
//! WebGPU's default 128 MiB): Integrated Gradients and SmoothGrad split their passes to fit
//! and give the CPU's result; what cannot be split (a weight larger than a buffer) is refused
//! with a message that names the limit.

mod common;

use candle_xai::backend::wgpu::WgpuDevice;
use candle_xai::methods::*;
use candle_xai::Device;
use common::{assert_close, explain_refs, mnist_cpu, mnist_model, REL_TOL};

/// The MNIST VGG's widest activation row is 16×28×28 f32 (49 KiB): a pass of 16 rows needs
/// 784 KiB per tensor, 4 rows (one copy of the four-digit batch) 196 KiB.
const SMALL_BUFFERS: u64 = 256 * 1024;

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
fn a_weight_larger_than_a_buffer_is_refused_with_the_limit() {
    // classifier.1.weight holds 18432 f32 (72 KiB).
    let tiny = Device::Wgpu(WgpuDevice::with_max_buffer_bytes(64 * 1024).unwrap());
    let model = mnist_cpu("vgg");
    let Err(err) = model.to_device(&tiny) else {
        panic!("a 72 KiB weight cannot fit 64 KiB buffers");
    };
    let err = err.to_string();
    assert!(err.contains("18432") && err.contains("65536 bytes"), "{err}");
}
