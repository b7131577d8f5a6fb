#!/usr/bin/env bash
# The browser build's tests (run scripts/setup-web.sh first):
#   1. `trunk build --release` -> dist/
#   2. the bindings' unit tests (wasm-bindgen-test) in headless Chromium, on the relaxed-SIMD build
#   3. the page's end-to-end tests (tests/e2e/*.test.mjs, node --test + playwright-core) against
#      dist/ served on 127.0.0.1, comparing every method's attributions with the native CLI's
# Screenshots land in target/e2e-screenshots/. Each step prints its time and the load average.
# (Clippy on the wasm32 build, a lint rather than a test, runs in .ci/run.)
#
# Environment: SKIP_BUILD=1 (reuse dist/), SKIP_WASM_TESTS=1, E2E_FILTER=<node --test-name-pattern>.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

step() { printf '== %s\n' "$*" >&2; }
took() { printf '== %s took %d s (load average %s)\n' "$1" $(($(date +%s) - $2)) "$(cut -d' ' -f1-3 /proc/loadavg)" >&2; }

if [ "${SKIP_BUILD:-0}" != 1 ]; then
    step "trunk build --release"
    t=$(date +%s)
    trunk build --release
    took "trunk build" "$t"
fi
for f in dist/index.html dist/candle-xai.js dist/candle-xai_bg.wasm dist/candle-xai-relaxed.js \
    dist/candle-xai-relaxed_bg.wasm dist/web/app.js; do
    [ -s "$f" ] || { echo "error: $f is missing; did trunk build fail?" >&2; exit 1; }
done
[ -s web/assets/model/mobilenet_v2.safetensors ] || {
    echo "error: the default model is missing: run scripts/setup-web.sh" >&2
    exit 1
}

if [ "${SKIP_WASM_TESTS:-0}" != 1 ]; then
    step "wasm-bindgen-test (headless Chromium)"
    t=$(date +%s)
    # The relaxed-SIMD build (the one Chromium's page loads; its product kernel exists only
    # there), in its target directory, where the page's build left its dependencies.
    CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner \
        CHROMEDRIVER=/usr/bin/chromedriver \
        WASM_BINDGEN_TEST_TIMEOUT=300 \
        scripts/cargo-relaxed-simd.sh test --release --lib
    took "wasm tests" "$t"
fi

step "native CLI for the parity checks"
cargo build --release --quiet --bin candle-xai

step "seeded EfficientNet, ConvNeXt and DeiT (.safetensors, .pth) for the page"
for model in efficientnet_b0 convnext_tiny timm_deit_w128_d2_distilled_patch8_64; do
    [ -s "target/e2e-models/$model.pth" ] && [ "target/e2e-models/$model.pth" -nt "tests/fixtures/${model}_refs.safetensors" ] && continue
    cargo run --release --quiet --example seeded_model -- "tests/fixtures/${model}_refs.safetensors" "target/e2e-models/$model"
done

step "browser end-to-end tests"
t=$(date +%s)
export CANDLE_XAI_BIN="$PWD/target/release/candle-xai"
filter=()
[ -n "${E2E_FILTER:-}" ] && filter=(--test-name-pattern "$E2E_FILTER")
node --test --test-concurrency=1 --test-reporter=spec "${filter[@]}" tests/e2e/*.test.mjs
took "end-to-end tests" "$t"
step "screenshots in target/e2e-screenshots/"
