#!/usr/bin/env bash
# Every test of the project: the native suite (parity with captum and zennit, layer edge cases
# against PyTorch, bad input, the CLI), then the browser build's tests in headless Chromium.
# Needs what scripts/setup-web.sh installs (it runs it first; each of its steps is skipped when
# already done).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-web.sh
cargo test --release
scripts/test-web.sh
