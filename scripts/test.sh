#!/usr/bin/env bash
# Every test of the project: the native suite (parity with captum and zennit, layer edge cases
# against PyTorch, LRP conservation, bad input, the CLI, the wgpu kernels; on the CPU and on
# wgpu), then the browser build's tests in headless Chromium (scripts/test-web.sh).
# Needs what scripts/setup-web.sh installs (it runs it first; each of its steps is skipped when
# already done). Each phase prints its time and the machine's load average.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

# phase NAME COMMAND...: runs COMMAND, then prints how long it took and the load meanwhile.
phase() {
    local name=$1 started
    shift
    started=$(date +%s)
    printf '== %s\n' "$name" >&2
    "$@"
    printf '== %s: %d s (load average %s)\n' "$name" $(($(date +%s) - started)) \
        "$(cut -d' ' -f1-3 /proc/loadavg)" >&2
}

started=$(date +%s)
phase "web set-up" scripts/setup-web.sh
# Build first, then run: the build's time and the tests' time are reported apart.
phase "native test build" cargo test --release --no-run --quiet
phase "native tests" cargo test --release
phase "browser tests" scripts/test-web.sh
printf '== all tests passed in %d s\n' $(($(date +%s) - started)) >&2
