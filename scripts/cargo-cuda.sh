#!/usr/bin/env bash
# cargo with the `cuda` feature, on the CUDA toolkit scripts/setup-cuda.sh installs (it runs it
# first; a no-op when done). Builds go to target/cuda/, apart from the default build's target/,
# so switching between them rebuilds nothing.
#
#   scripts/cargo-cuda.sh build --release               # target/cuda/release/candle-xai
#   scripts/cargo-cuda.sh test --release --no-run       # the test binaries, for a GPU machine
#
# Environment: CUDA_COMPUTE_CAP (default 90: an H100/H200; 80 for an A100, 89 for an L4/RTX 40),
# XAI_CACHE (where the toolkit lives).
set -euo pipefail
cd "$(dirname "$0")/.."
CUDA_HOME=$(scripts/setup-cuda.sh)
export CUDA_HOME
export PATH="$HOME/.cargo/bin:$PATH"
export PATH="$CUDA_HOME/bin:$PATH"
# No nvidia-smi here to ask: the kernels are compiled for this compute capability.
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
export CUDARC_CUDA_VERSION=13000
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target/cuda}

command=$1
shift
exec cargo "$command" --features cuda "$@"
