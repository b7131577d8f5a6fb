//! The CUDA kernels (src/backend/candle/kernels.cu) checked on every machine, GPU or not: the
//! host's C++ compiler builds them, one loop iteration per CUDA thread, into
//! tests/cuda_host/kernels_on_host.cpp, which compares them exactly with the CPU kernels' loops
//! on random shapes. On a GPU the device-generic suites run the compiled kernels themselves.

use std::path::Path;
use std::process::Command;

#[test]
fn cuda_kernels_equal_the_cpu_loops_on_the_host() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let source = root.join("tests/cuda_host/kernels_on_host.cpp");
    let binary = std::env::temp_dir().join(format!("candle-xai-kernels-on-host-{}", std::process::id()));
    let compiler = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    // No contraction into fused multiply-adds: build.rs compiles the PTX with --fmad=false, and
    // the comparison is exact.
    let built = Command::new(&compiler)
        .args(["-std=c++17", "-O1", "-ffp-contract=off", "-Wall", "-Werror", "-o"])
        .arg(&binary)
        .arg(&source)
        .output()
        .unwrap_or_else(|e| panic!("this test needs a C++ compiler ({compiler}: {e}); apt-get install g++"));
    assert!(
        built.status.success(),
        "{compiler} failed:\n{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let run = Command::new(&binary).output().unwrap();
    let _ = std::fs::remove_file(&binary);
    let report = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "the CUDA kernels differ from the CPU loops:\n{report}"
    );
    assert!(report.contains("equal to the CPU loops"), "{report}");
}
