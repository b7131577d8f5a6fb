#!/usr/bin/env bash
# cargo for the page's second engine build: wasm32 with WebAssembly relaxed SIMD, in its own
# target directory (other flags, other artifacts). The first argument is cargo's command:
#   scripts/cargo-relaxed-simd.sh build --release --lib                     (scripts/build-relaxed-wasm.sh)
#   scripts/cargo-relaxed-simd.sh test --release --lib                      (scripts/test-web.sh)
#   scripts/cargo-relaxed-simd.sh clippy --release --lib -- -D warnings     (.ci/run)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
export RUSTFLAGS="-C target-feature=+simd128,+relaxed-simd"
command=$1
shift
exec cargo "$command" --target wasm32-unknown-unknown --target-dir target/wasm-relaxed "$@"
