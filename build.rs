//! With the `cuda` feature: compiles src/backend/candle/kernels.cu to PTX for
//! `CUDA_COMPUTE_CAP` (default 90) with the nvcc on `NVCC`, `$CUDA_HOME/bin` or the PATH
//! (scripts/setup-cuda.sh installs one from PyPI). Without the feature it does nothing.

use std::env;
use std::path::PathBuf;
use std::process::Command;

const KERNELS: &str = "src/backend/candle/kernels.cu";

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    if env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    println!("cargo::rerun-if-changed={KERNELS}");
    for var in ["NVCC", "CUDA_HOME", "CUDA_COMPUTE_CAP"] {
        println!("cargo::rerun-if-env-changed={var}");
    }
    let nvcc = env::var_os("NVCC").map(PathBuf::from).unwrap_or_else(|| {
        env::var_os("CUDA_HOME")
            .map(|home| PathBuf::from(home).join("bin/nvcc"))
            .filter(|nvcc| nvcc.exists())
            .unwrap_or_else(|| PathBuf::from("nvcc"))
    });
    let compute_cap = env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90".into());
    let ptx = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("kernels.ptx");
    // --fmad=false: no fused multiply-adds, so the sums round as the CPU kernels' do and CUDA
    // results equal the CPU's bit for bit.
    let status = Command::new(&nvcc)
        .args(["--ptx", "-O3", "--fmad=false", "-std=c++17"])
        .arg(format!("-arch=sm_{compute_cap}"))
        .arg(KERNELS)
        .arg("-o")
        .arg(&ptx)
        .status()
        .unwrap_or_else(|e| {
            panic!(
                "the cuda feature needs nvcc ({} could not run: {e}); scripts/setup-cuda.sh installs one",
                nvcc.display()
            )
        });
    assert!(status.success(), "nvcc failed on {KERNELS} ({status})");
}
