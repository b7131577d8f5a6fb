#!/usr/bin/env bash
# trunk's post-build hook (Trunk.toml): the engine built a second time with WebAssembly relaxed
# SIMD, as dist/candle-xai-relaxed.js and candle-xai-relaxed_bg.wasm. Its convolutions multiply
# and add in one fused instruction (src/backend/candle/simd128_product.rs); web/xai.js loads it
# where the browser validates relaxed SIMD (Chrome and Edge since 114), and trunk's own
# build (simd128 only) everywhere else. Its own target directory: other flags, other artifacts.
set -euo pipefail
cd "${TRUNK_SOURCE_DIR:-$(dirname "$0")/..}"
export PATH="$HOME/.cargo/bin:$PATH"
profile=${TRUNK_PROFILE:-release}
out=${TRUNK_STAGING_DIR:-dist}
release=()
[ "$profile" = release ] && release=(--release)
RUSTFLAGS="-C target-feature=+simd128,+relaxed-simd" cargo build "${release[@]}" --offline --quiet --lib \
    --target wasm32-unknown-unknown --target-dir target/wasm-relaxed
wasm-bindgen --target web --no-typescript --out-dir "$out" --out-name candle-xai-relaxed \
    "target/wasm-relaxed/wasm32-unknown-unknown/$([ "$profile" = release ] && echo release || echo debug)/candle_xai.wasm"
