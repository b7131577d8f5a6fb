#!/usr/bin/env bash
# candle-xai's wgpu backend on whatever adapter wgpu finds (named in every row), against PyTorch + captum /
# zennit on CUDA when torch sees a GPU, plus both on CPU, on one machine; prints Markdown tables.
#
#   scripts/bench_gpu.sh [reps]
#
# Knobs: WORK_DIR (default /tmp/candle-xai-bench-gpu), PYTHON (with torch, torchvision, captum 0.9, zennit 0.5.1,
# safetensors), BENCH_BIN (a prebuilt `examples/bench`, for machines without cargo), DEVICES (ours, default
# "wgpu cpu"; "cuda wgpu cpu" with a bench built by `scripts/cargo-cuda.sh build --release --example bench`,
# which is target/cuda/release/examples/bench). On a software adapter
# (lavapipe, SwiftShader) the wgpu rows prove only that it runs: time a real GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=${1:-5}
WORK_DIR=${WORK_DIR:-/tmp/candle-xai-bench-gpu}
PYTHON=${PYTHON:-python3}
mkdir -p "$WORK_DIR"
if [ -z "${BENCH_BIN:-}" ]; then
    cargo build --release --example bench >&2
    BENCH_BIN=target/release/examples/bench
fi
torch_device=$("$PYTHON" -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')
"$PYTHON" scripts/bench_torch.py --out-dir "$WORK_DIR" --reps "$REPS" --device "$torch_device" \
    > "$WORK_DIR/torch_$torch_device.jsonl"
[ "$torch_device" = cpu ] || "$PYTHON" scripts/bench_torch.py --out-dir "$WORK_DIR" --reps "$REPS" \
    > "$WORK_DIR/torch_cpu.jsonl"
for device in ${DEVICES:-wgpu cpu}; do
    for arch in resnet18 mobilenet_v2; do
        "$BENCH_BIN" --model "$WORK_DIR/$arch.safetensors" --arch-name "$arch" \
            --input "$WORK_DIR/input.safetensors" --reps "$REPS" --json --device "$device"
    done > "$WORK_DIR/ours_$device.jsonl"
done
"$PYTHON" scripts/bench_gpu_report.py "$WORK_DIR"
