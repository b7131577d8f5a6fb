#!/usr/bin/env bash
# trunk's post-build hook (Trunk.toml): the engine built a second time with WebAssembly relaxed
# SIMD, as dist/candle-xai-relaxed.js and candle-xai-relaxed_bg.wasm. Its convolutions multiply
# and add in one fused instruction (src/backend/candle/simd128_product.rs); web/xai.js loads it
# where the browser validates relaxed SIMD (Chrome and Edge since 114), and trunk's own
# build (simd128 only) everywhere else.
set -euo pipefail
cd "${TRUNK_SOURCE_DIR:-$(dirname "$0")/..}"
export PATH="$HOME/.cargo/bin:$PATH"
profile=debug
release=()
if [ "${TRUNK_PROFILE:-release}" = release ]; then
    profile=release
    release=(--release)
fi
scripts/cargo-relaxed-simd.sh build "${release[@]}" --offline --quiet --lib
wasm-bindgen --target web --no-typescript --out-dir "${TRUNK_STAGING_DIR:-dist}" --out-name candle-xai-relaxed \
    "target/wasm-relaxed/wasm32-unknown-unknown/$profile/candle_xai.wasm"
