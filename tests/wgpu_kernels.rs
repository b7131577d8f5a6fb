//! What only the wgpu backend has: its dispatch grid folding past the per-dimension limit,
//! its command batching, and its own shape and buffer-size checks (rough kernel timings are
//! `examples/wgpu_timing.rs`).
//! What every backend must compute alike (every operation against a reference) is in
//! backend_ops.rs, which runs on this backend too.
#![cfg(feature = "wgpu")]

use std::sync::OnceLock;

use candle_xai::backend::wgpu::{WgpuDevice, WgpuTensor};
use candle_xai::backend::{BackendStorage, Map, PoolWindow, WindowGeometry, Zip};

fn device() -> &'static WgpuDevice {
    static DEVICE: OnceLock<WgpuDevice> = OnceLock::new();
    DEVICE.get_or_init(|| WgpuDevice::new().expect("a wgpu adapter (lavapipe is enough)"))
}

fn upload(data: &[f32], dims: &[usize]) -> WgpuTensor {
    device().upload(data, dims).unwrap()
}

#[test]
fn map_large_folds_the_dispatch() {
    // 65535 * 256 elements is the most one dispatch dimension holds; go past it.
    let len = 65535 * 256 + 1000;
    let x: Vec<f32> = (0..len).map(|i| (i % 1000) as f32).collect();
    let got = upload(&x, &[len]).map(Map::Affine { mul: 2.0, add: 1.0 }).unwrap();
    let want: Vec<f32> = x.iter().map(|v| v * 2.0 + 1.0).collect();
    assert_eq!(got.to_vec().unwrap(), want);
}

/// The conv input-VJP's GEMM folds its grid past 65535 workgroups too, and unfolds the
/// linear workgroup id itself. Stride 256 makes 65536 stride phases of one sample, nearly all
/// without pixels: past the limit, yet cheap. Rows 0 and 1 each take one tap, row 2 none (it
/// must still be written, as zero).
#[test]
fn conv_vjp_gemm_folds_the_dispatch() {
    // 16 input channels: the input-VJP's GEMM rather than its gather.
    let (cin, cout, (h, w)) = (16, 3, (3, 2));
    let g = WindowGeometry {
        kernel: (2, 1),
        padding: (0, 0, 0, 0),
        ..geometry((1, 1), 256, 0)
    };
    let kernel: Vec<f32> = (0..cout * cin * 2).map(|i| (i as f32 * 0.37).sin()).collect();
    let grad = [0.5, -1.0, 2.0];
    let dx = upload(&grad, &[1, cout, 1, 1])
        .conv2d_transposed(&upload(&kernel, &[cout, cin, 2, 1]), &g, (h, w))
        .unwrap()
        .to_vec()
        .unwrap();
    for (i, &got) in dx.iter().enumerate() {
        let (ci, row, col) = (i / (h * w), (i / w) % h, i % w);
        let want: f32 = match (row, col) {
            (0 | 1, 0) => (0..cout).map(|co| grad[co] * kernel[(co * cin + ci) * 2 + row]).sum(),
            _ => 0.0,
        };
        assert!(
            (got - want).abs() <= 1e-6,
            "dx[0, {ci}, {row}, {col}] = {got}, expected {want}"
        );
    }
}

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
    assert_eq!(t.to_vec().unwrap(), want);
}

/// `crate::Tensor` checks shapes before it calls a backend; the wgpu backend checks them
/// again, because a wrong size would otherwise only surface as an asynchronous validation
/// error (or a silent out-of-bounds read), and so does its buffer-size limit.
#[test]
fn oversized_and_mismatched_inputs_are_errors() {
    let t = upload(&[1.0; 6], &[2, 3]);
    assert!(device().upload(&[1.0; 5], &[2, 3]).is_err());
    assert!(t.reshape(&[7]).is_err());
    assert!(t.narrow_rows(1, 2).is_err());
    assert!(upload(&[1.0], &[]).narrow_rows(0, 0).is_err());
    assert!(t.zip(&upload(&[1.0; 4], &[4]), Zip::Add).is_err());
    assert!(t.matmul(&t, false).is_err());
    let window = PoolWindow {
        kernel: (2, 2),
        stride: (1, 1),
        padding: (0, 0),
        dilation: (1, 1),
        ceil_mode: false,
    };
    assert!(t.max_pool(&window).is_err());
    let k = upload(&[1.0; 9], &[1, 1, 3, 3]);
    assert!(t.conv2d(&k, &geometry((3, 3), 1, 1)).is_err());
    // Past 4 GiB no device binds a storage buffer: the check must fail before wgpu does.
    let big = upload(&vec![0.0; 1 << 20], &[1, 1 << 20]);
    let parts = vec![&big; 1100];
    let err = WgpuTensor::cat_rows(&parts).unwrap_err();
    assert!(err.to_string().contains("limit"), "{err}");
}

fn geometry(kernel: (usize, usize), stride: usize, padding: usize) -> WindowGeometry {
    WindowGeometry {
        kernel,
        stride,
        dilation: 1,
        padding: (padding, padding, padding, padding),
        groups: 1,
    }
}
