#!/usr/bin/env bash
# The native test suite on an NVIDIA GPU, in two halves, for GPU machines without a Rust
# toolchain:
#
#   scripts/test-gpu.sh build   # here: the CUDA build of the test binaries and the CLI,
#                               # stripped and packed into target/gpu-tests.tar.xz
#   scripts/test-gpu.sh run     # on the GPU machine, in a checkout holding that file:
#                               # unpacks it and runs every test, on the CPU and on CUDA
#
# The binaries are built without the wgpu backend (`--no-default-features --features cuda`):
# every device-generic test then runs on the CPU and on CUDA device 0, and a machine without
# one fails them ("built with the cuda feature but no CUDA device"). The fixtures are read from
# the checkout `run` is started in (CANDLE_XAI_ROOT), the CLI from the bundle (CANDLE_XAI_BIN).
# `run` needs the NVIDIA driver and cuBLAS, cuBLASLt, cuRAND, NVRTC and the CUDA 13 runtime; it
# looks for them on the loader's path, then in the Python packages NVIDIA ships them in (as a
# PyTorch installation has them).
#
# Environment: CUDA_COMPUTE_CAP for build (default 90), PYTHON for run (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
BUNDLE=target/gpu-tests.tar.xz
UNPACKED=target/gpu-tests

build() {
    local binaries=() line
    # The test binaries cargo reports, one JSON line each.
    while IFS= read -r line; do
        binaries+=("$line")
    done < <(scripts/cargo-cuda.sh test --release --no-default-features --no-run --message-format=json |
        python3 -c 'import json, sys
for line in sys.stdin:
    message = json.loads(line)
    if message.get("reason") == "compiler-artifact" and message.get("executable") and message["profile"]["test"]:
        target = message["target"]
        kind = "lib" if "rlib" in target["kind"] else target["kind"][0]
        print(kind + "-" + target["name"], message["executable"])')
    rm -rf "$UNPACKED" && mkdir -p "$UNPACKED"
    local name binary
    for line in "${binaries[@]}"; do
        read -r name binary <<<"$line"
        # The host-only check of the kernels (it compiles C++) and the wgpu suites (empty here)
        # have nothing to run on a GPU.
        case $name in test-cuda_kernels_on_host | test-wgpu_*) continue ;; esac
        strip -o "$UNPACKED/$name" "$binary"
    done
    strip -o "$UNPACKED/candle-xai" target/cuda/release/candle-xai
    tar -C target -cf - gpu-tests | xz -T0 -6 >"$BUNDLE"
    printf '%s: %s (%s)\n' "$BUNDLE" "$(ls "$UNPACKED" | tr '\n' ' ')" "$(du -h "$BUNDLE" | cut -f1)" >&2
}

# Adds to LD_LIBRARY_PATH the folder of each CUDA library the loader does not find by itself.
find_cuda_libraries() {
    local library found
    local site_packages
    site_packages=$("${PYTHON:-python3}" -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null || true)
    for library in libcuda.so.1 libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libnvrtc.so.13 libcudart.so.13; do
        ldconfig -p | grep -q "$library" && continue
        # shellcheck disable=SC2086
        found=$(find $site_packages /usr/local/cuda* -name "$library" 2>/dev/null | head -1 || true)
        [ -n "$found" ] || { echo "error: $library not found (the NVIDIA driver and CUDA 13 libraries are needed)" >&2; exit 1; }
        LD_LIBRARY_PATH="$(dirname "$found")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    done
    export LD_LIBRARY_PATH
}

run() {
    [ -f "$BUNDLE" ] || { echo "error: no $BUNDLE: run 'scripts/test-gpu.sh build' on a machine with Rust" >&2; exit 1; }
    rm -rf "$UNPACKED" && xz -dc "$BUNDLE" | tar -C target -xf -
    find_cuda_libraries
    export CANDLE_XAI_ROOT=$PWD CANDLE_XAI_BIN=$PWD/$UNPACKED/candle-xai
    local binary failed=()
    for binary in "$UNPACKED"/*; do
        [ "$(basename "$binary")" = candle-xai ] && continue
        printf '== %s\n' "$(basename "$binary")" >&2
        "$binary" --test-threads="$(nproc)" || failed+=("$(basename "$binary")")
    done
    [ ${#failed[@]} -eq 0 ] || { echo "failed: ${failed[*]}" >&2; exit 1; }
    echo "== every test passed on the CPU and on CUDA" >&2
}

case ${1:-} in
build) build ;;
run) run ;;
*) echo "usage: scripts/test-gpu.sh build|run" >&2 && exit 2 ;;
esac
