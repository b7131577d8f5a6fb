#!/usr/bin/env bash
# Installs what `cargo build --features cuda` needs on a machine without a GPU or a CUDA
# installation, idempotently, from PyPI only: NVIDIA's nvcc, nvvm (cicc), the CUDA headers
# (crt, cccl) and the CUDA runtime, pinned to CUDA 13.0 (the driver of the GPU machine this
# project's CUDA tests run on refuses PTX from a newer compiler). The toolkit is unpacked into
# $XAI_CACHE/cuda-<version>/ (default ~/.cache/candle-xai).
#
# The binaries link against the driver (libcuda), cuBLAS, cuBLASLt, cuRAND and NVRTC (candle's
# `cudarc` links them dynamically). Those libraries come with the driver or with PyTorch on a
# GPU machine; for linking here, link stubs are generated: shared libraries with the right
# sonames that export the functions cudarc declares, as the CUDA toolkit's own lib64/stubs do.
# At run time the real libraries are loaded by soname; the stubs are never on the loader's path.
#
#   scripts/setup-cuda.sh                      # install (no-op when done); prints the toolkit's
#                                              # folder (CUDA_HOME) on stdout
#   scripts/cargo-cuda.sh build --release      # cargo with the cuda feature and this toolkit
#
# Environment: XAI_CACHE, PYTHON (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."

# NVIDIA's PyPI packages of one CUDA release (13.0 update 2); change them together.
PACKAGES=(
    nvidia-cuda-nvcc==13.0.88
    nvidia-nvvm==13.0.88
    nvidia-cuda-crt==13.0.88
    nvidia-cuda-cccl==13.0.85
    nvidia-cuda-runtime==13.0.96
)
CUDA_ROOT=${XAI_CACHE:-$HOME/.cache/candle-xai}/cuda-13.0.88
PYTHON=${PYTHON:-python3}
export PATH="$HOME/.cargo/bin:$PATH"
TOOLKIT=$CUDA_ROOT/nvidia/cu13
STUBS=$TOOLKIT/lib/stubs
# Bumped when what this script builds changes, so an older installation is redone.
LAYOUT=2

step() { printf '== %s\n' "$*" >&2; }

if [ "$(cat "$CUDA_ROOT/.installed" 2>/dev/null)" != "$LAYOUT ${PACKAGES[*]}" ]; then
    step "CUDA 13.0 toolkit from PyPI into $CUDA_ROOT"
    # pip to fetch the wheels; g++, nvcc's host compiler.
    missing=()
    "$PYTHON" -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
    command -v g++ >/dev/null || missing+=(g++)
    if [ ${#missing[@]} -gt 0 ]; then
        sudo=""
        [ "$(id -u)" = 0 ] || sudo=sudo
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    rm -rf "$CUDA_ROOT"
    mkdir -p "$CUDA_ROOT/wheels"
    # `pip download`, not `pip install`: Debian's Python is externally managed, and wheels are
    # zip archives that need nothing but unpacking.
    "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: \
        --dest "$CUDA_ROOT/wheels" "${PACKAGES[@]}"
    for wheel in "$CUDA_ROOT"/wheels/*.whl; do
        "$PYTHON" -m zipfile -e "$wheel" "$CUDA_ROOT"
    done
    chmod +x "$TOOLKIT"/bin/* "$TOOLKIT"/nvvm/bin/*
    ln -sf libcudart.so.13 "$TOOLKIT/lib/libcudart.so"

    step "link stubs for libcuda, libcublas, libcublasLt, libcurand, libnvrtc"
    cudarc=$(cargo metadata --format-version 1 --features cuda 2>/dev/null |
        "$PYTHON" -c 'import json, sys, os
packages = json.load(sys.stdin)["packages"]
print(next(os.path.dirname(p["manifest_path"]) for p in packages if p["name"] == "cudarc"))')
    mkdir -p "$STUBS"
    # library soname cudarc's bindings of it
    while read -r library soname bindings; do
        # Every function the bindings declare (each CUDA version's cfg-gated copy included),
        # as a C function that returns 34, the driver's CUDA_ERROR_STUB_LIBRARY (an error status
        # for the other libraries too): the linker needs the names, never the code, and a
        # binary that meets a stub at run time gets an error rather than garbage.
        grep -rhoE '^\s*fn (cu|nvrtc)[A-Za-z0-9_]*\(' "$cudarc/src/$bindings" |
            sed -E 's/.*fn ([A-Za-z0-9_]+)\(/int \1(void) { return 34; }/' | sort -u >"$STUBS/$library.c"
        [ -s "$STUBS/$library.c" ] || { echo "error: no functions found in $cudarc/src/$bindings" >&2; exit 1; }
        cc -shared -fPIC -o "$STUBS/$library.so" -Wl,-soname,"$soname" "$STUBS/$library.c"
        rm "$STUBS/$library.c"
    done <<'EOF'
libcuda libcuda.so.1 driver/sys
libcublas libcublas.so.13 cublas/sys
libcublasLt libcublasLt.so.13 cublaslt/sys
libcurand libcurand.so.10 curand/sys
libnvrtc libnvrtc.so.13 nvrtc/sys
EOF
    "$TOOLKIT/bin/nvcc" --version | tail -2 >&2
    echo "$LAYOUT ${PACKAGES[*]}" >"$CUDA_ROOT/.installed"
fi
echo "$TOOLKIT"
