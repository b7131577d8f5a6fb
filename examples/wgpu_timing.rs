//! Rough timings of the wgpu backend's heaviest kernels on this machine's adapter, with the
//! arithmetic rate they reach: `cargo run --release --example wgpu_timing`.
//!
//! Each figure is the mean of 5 runs after a warm-up, including the readback, so small cases
//! are dominated by submission and mapping. On a software adapter (Mesa's lavapipe) they say
//! how long the test suite's GPU half takes, nothing about a GPU.

use std::time::{Duration, Instant};

use candle_xai::backend::wgpu::{WgpuDevice, WgpuTensor};
use candle_xai::backend::{BackendStorage, Map, WindowGeometry};

const REPS: u32 = 5;

fn main() -> candle_xai::Result<()> {
    let device = WgpuDevice::new()?;
    println!("adapter: {device:?}");
    let filled = |dims: &[usize]| -> candle_xai::Result<WgpuTensor> {
        let data: Vec<f32> = (0..dims.iter().product::<usize>())
            .map(|i| (i as f32 * 0.37).sin())
            .collect();
        device.upload(&data, dims)
    };
    let geometry = |kernel: usize, stride: usize, padding: usize, groups: usize| WindowGeometry {
        kernel: (kernel, kernel),
        stride,
        dilation: 1,
        padding: (padding, padding, padding, padding),
        groups,
    };
    let cases = [
        ("1x64x56x56 3x3 conv", [1, 64, 56, 56], 64, geometry(3, 1, 1, 1)),
        ("1x64x56x56 3x3 depthwise", [1, 64, 56, 56], 64, geometry(3, 1, 1, 64)),
        (
            "1x3x224x224 7x7/2 stem conv",
            [1, 3, 224, 224],
            64,
            geometry(7, 2, 3, 1),
        ),
        ("1x256x14x14 3x3 conv", [1, 256, 14, 14], 256, geometry(3, 1, 1, 1)),
        (
            "1x512x4x4 3x3 conv (a small map)",
            [1, 512, 4, 4],
            512,
            geometry(3, 1, 1, 1),
        ),
    ];
    for (name, dims, cout, g) in cases {
        let x = filled(&dims)?;
        let k = filled(&[cout, dims[1] / g.groups, g.kernel.0, g.kernel.1])?;
        let out = x.conv2d(&k, &g)?;
        let grad = filled(out.dims())?;
        // Multiply-adds of one pass: every output sums Cin/groups x kh x kw products.
        let macs = out.dims().iter().product::<usize>() * dims[1] / g.groups * g.kernel.0 * g.kernel.1;
        let forward = time(|| x.conv2d(&k, &g)?.to_vec().map(drop))?;
        let vjp = time(|| grad.conv2d_transposed(&k, &g, (dims[2], dims[3]))?.to_vec().map(drop))?;
        println!("{name}: forward {}, input-VJP {}", rate(forward, macs), rate(vjp, macs));
    }
    let a = filled(&[512, 512])?;
    let matmul = time(|| a.matmul(&a, false)?.to_vec().map(drop))?;
    println!("512x512x512 matmul: {}", rate(matmul, 512 * 512 * 512));
    // A model's pass is mostly small operations: what each costs beyond its kernel.
    let small = filled(&[64, 64])?;
    let ops = 1000;
    let started = Instant::now();
    let mut t = small.clone();
    for _ in 0..ops {
        t = t.map(Map::Affine { mul: 1.0, add: 0.5 })?;
    }
    let recorded = started.elapsed();
    t.to_vec()?;
    println!(
        "{ops} chained 64x64 maps: {:?} per op on the host, {:?} per op until read back",
        recorded / ops,
        started.elapsed() / ops
    );
    Ok(())
}

/// The mean time of `run` over [`REPS`] runs after one warm-up.
fn time(mut run: impl FnMut() -> candle_xai::Result<()>) -> candle_xai::Result<Duration> {
    run()?;
    let started = Instant::now();
    for _ in 0..REPS {
        run()?;
    }
    Ok(started.elapsed() / REPS)
}

fn rate(took: Duration, macs: usize) -> String {
    let gflops = 2.0 * macs as f64 / took.as_secs_f64() / 1e9;
    format!("{took:.2?} ({gflops:.2} GFLOP/s)")
}
