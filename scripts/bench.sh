#!/usr/bin/env bash
# candle-xai vs captum/zennit on CPU: same weights, same input, same machine, same run.
#
#   scripts/bench.sh [reps]          # writes BENCHMARKS.md at the repository root
#
# Knobs (environment): REPS (default 5; the first argument wins), SIZE (input height/width, default 224),
# BATCH (rows of the input, each explained for its top-1 class, default 1),
# MODELS (space-separated torchvision names with fixture canonizers, default "resnet18 vgg11_bn mobilenet_v2"; also the
# vision transformers vit_b_16 and deit_small_patch16_224, timm's, see scripts/bench_torch.py),
# OUT (the report, default BENCHMARKS.md at the repository root), WORK_DIR (weights, input and raw rows,
# default /tmp/candle-xai-bench), PYTHON (default /work/pyref/bin/python, a venv with torch, torchvision,
# captum, zennit and safetensors; for the transformers also timm and lxt), WEB (0: no browser benchmark).
# A quick check of the harness: REPS=1 SIZE=64 OUT=/tmp/bench-check.md scripts/bench.sh
# Last, when dist/ (trunk build --release) and the default model are there, it appends the browser's
# engine (wasm CPU, headless Chromium) vs native CPU on MobileNetV2 at 224x224: scripts/bench_web.mjs.
set -euo pipefail

cd "$(dirname "$0")/.."
REPS=${1:-${REPS:-5}}
SIZE=${SIZE:-224}
BATCH=${BATCH:-1}
OUT=${OUT:-BENCHMARKS.md}
WORK_DIR=${WORK_DIR:-/tmp/candle-xai-bench}
PYTHON=${PYTHON:-/work/pyref/bin/python}
read -r -a MODELS <<< "${MODELS:-resnet18 vgg11_bn mobilenet_v2}"
mkdir -p "$WORK_DIR"

echo "== PyTorch side (writes the weights and the input to $WORK_DIR)" >&2
"$PYTHON" scripts/bench_torch.py --out-dir "$WORK_DIR" --reps "$REPS" --size "$SIZE" --batch "$BATCH" --models "${MODELS[@]}" >&2

echo "== candle-xai side" >&2
cargo build --release --example bench >&2
: > "$WORK_DIR/ours.jsonl"
for arch in "${MODELS[@]}"; do
    load_as=$arch
    if [ "$arch" = deit_small_patch16_224 ]; then
        load_as=timm_vit_small_patch16_224 # timm's DeiT-S (not distilled) has a plain ViT's layout
    fi
    cargo run --quiet --release --example bench -- --model "$WORK_DIR/$arch.safetensors" --arch-name "$arch" \
        --arch "$load_as" --input "$WORK_DIR/input.safetensors" --reps "$REPS" --json \
        | tee -a "$WORK_DIR/ours.jsonl" >&2
done

command_line="scripts/bench.sh $REPS"
if [ "${MODELS[*]}" != "resnet18 vgg11_bn mobilenet_v2" ]; then command_line="MODELS=\"${MODELS[*]}\" $command_line"; fi
if [ "$SIZE" != 224 ]; then command_line="SIZE=$SIZE $command_line"; fi
if [ "$BATCH" != 1 ]; then command_line="BATCH=$BATCH $command_line"; fi
export REPS SIZE BATCH WORK_DIR OUT command_line
export NPROC=$(nproc)
export CPU_MODEL=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
export CANDLE_VERSION=$(grep -A1 '^name = "candle-core"$' Cargo.lock | sed -n 's/^version = "\(.*\)"/\1/p')
export RUSTC_VERSION=$(rustc --version)
export DATE=$(date -u '+%Y-%m-%d %H:%M UTC')
export COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if grep -qw avx512f /proc/cpuinfo; then export CPU_SIMD="AVX-512 (avx512f)"; elif grep -qw avx2 /proc/cpuinfo; then export CPU_SIMD=AVX2; else export CPU_SIMD="no AVX2"; fi

"$PYTHON" - <<'EOF'
import json, os

env = os.environ
work = env["WORK_DIR"]
read = lambda name: [json.loads(line) for line in open(os.path.join(work, name)) if line.strip()]
ours = {(r["model"], r["method"]): r for r in read("ours.jsonl")}
torch_rows = {(r["model"], r["method"]): r for r in read("torch.jsonl")}
facts = json.load(open(os.path.join(work, "torch_env.json")))
ours_threads = sorted({r["threads"] for r in ours.values()})
size, batch = env["SIZE"], int(env["BATCH"])
# Multiply-accumulates per row in units of one forward pass (2 FLOP each): an input-gradient pass costs as many as
# a forward; every row includes the top-1 prediction forward (ours: gradient and Grad-CAM take it from the forward
# they differentiate).
FORWARDS_PER_ROW = {"gradient": 2, "input-x-gradient": 2, "integrated-gradients": 1 + 32 * 2, "smoothgrad": 1 + 8 * 2}


def gflops(model, method, row):
    passes = FORWARDS_PER_ROW.get(method)
    if row is None or passes is None:
        return ""
    flop = 2 * facts["forward_gmac"][model] * passes * batch
    return f"{flop / (row['ms_min'] / 1e3):.0f}"


lines = [
    "# Benchmarks: candle-xai vs captum / zennit (CPU)",
    "",
    f"Wall-clock milliseconds per explanation of one [{batch}, 3, {size}, {size}] input (each row explained for "
    f"its top-1 class), median of {env['REPS']} "
    "timed calls after one warm-up (minimum in parentheses). Ratio = PyTorch / ours: above 1 means candle-xai "
    "is faster. Both sides run in the same script on the same machine, on the same seeded random weights "
    "(torchvision architecture, 1000 classes) and the same seeded random input, float32.",
    "",
    "GFLOP/s (from the minimum time) where the work is a known number of passes: 2 FLOP per multiply-accumulate "
    "of the convolutions and linear layers, a forward pass and an input-gradient pass costing as many, and the "
    "prediction forward counted (gradient and input x gradient: 2 passes per row; integrated gradients 65; "
    f"SmoothGrad 17). The machine's practical peak: PyTorch's own 4096^3 matrix product reaches "
    f"**{facts['gemm_gflops']:.0f} GFLOP/s** here.",
    "",
]
for model in dict.fromkeys(m for m, _ in torch_rows):
    lines += [f"## {model} ({facts['forward_gmac'][model]:.2f} GMAC per forward)", "",
              "| method | ours ms | PyTorch ms | PyTorch / ours | ours GFLOP/s | PyTorch GFLOP/s |",
              "|---|---:|---:|---:|---:|---:|"]
    for (m, method), t in torch_rows.items():
        if m != model:
            continue
        o = ours.get((m, method))
        cell = lambda r: f"{r['ms_median']:.1f} ({r['ms_min']:.1f})" if r else "n/a"
        ratio = f"{t['ms_median'] / o['ms_median']:.2f}" if o else "n/a"
        lines.append(f"| {method} | {cell(o)} | {cell(t)} | {ratio} | {gflops(m, method, o)} | {gflops(m, method, t)} |")
    lines.append("")

lines += [
    "## What each row runs",
    "",
    "Every call explains the input's top-1 class, so it includes finding it: on the PyTorch side a "
    "`model(x).argmax()` forward under `no_grad`; ours, for gradient (and Grad-CAM), takes it from the "
    "forward pass it differentiates, and for the other methods runs a prediction forward first. "
    "Parameters are the same on both sides:",
    "",
    "- **gradient**: captum `Saliency(model).attribute(x, target, abs=False)`; ours `GradientParams { abs: false }`.",
    "- **input-x-gradient**: captum `InputXGradient(model).attribute(x, target)`; ours `Method::InputXGradient`.",
    "- **integrated-gradients**: 32 Gauss-Legendre steps, zero baseline, all 32 steps in one batch of 32 rows: "
    "captum `IntegratedGradients.attribute(n_steps=32, method=\"gausslegendre\", internal_batch_size=32, "
    "return_convergence_delta=True)` (ours always computes the convergence delta); ours "
    "`n_steps: 32, batch_size: Some(32)`.",
    "- **smoothgrad**: 8 noisy samples in one batch of 8 rows, noise std 0.1 x (max - min) of the input: captum "
    "`NoiseTunnel(Saliency).attribute(nt_type=\"smoothgrad\", nt_samples=8, nt_samples_batch_size=8, "
    "stdevs=0.1*(x.max()-x.min()), abs=False)`; ours `n_samples: 8, noise_level: 0.1, batch_size: Some(8)`.",
    "- **grad-cam**: captum `LayerAttribution.interpolate(LayerGradCam(model, layer).attribute(x, target, "
    "relu_attributions=True), (H, W), \"bilinear\")` at the layer the Grad-CAM fixtures use (resnet18 `layer4`, "
    "vgg11_bn `features.27`, mobilenet_v2 `features.18`); ours `GradCamParams::default()` at the model's default "
    "layer, the same one.",
    "- **lrp-\\***: zennit `with Gradient(model, composite) as attributor: attributor(x, one_hot)`, with the "
    "composite's construction and registration (canonizers included) inside the timing, since our LRP merges "
    "BatchNorm on every call. Composites: `lrp-uniform-epsilon` = `LayerMapComposite(layer_map_base() + "
    "[(Convolution, Epsilon(0.25)), (Linear, Epsilon(0.25))])`, `lrp-epsilon-gamma-box` = "
    "`EpsilonGammaBox(low=-3, high=3)`, then `EpsilonPlus`, `EpsilonAlpha2Beta1`, `EpsilonPlusFlat`, "
    "`EpsilonAlpha2Beta1Flat`. Composites and canonizers are exactly the ones the reference fixtures "
    "check (`scripts/xai_reference.py`, imported by `scripts/make_fixtures.py` and `scripts/bench_torch.py`): "
    "`zennit.torchvision.ResNetCanonizer()` for resnet18 (BatchNorm merge, residual add -> `zennit.layer.Sum`), "
    "`zennit.torchvision.VGGCanonizer()` for vgg11_bn (BatchNorm merge), "
    "`MobileNetV2Canonizer()` for mobilenet_v2 (zennit 0.5.1 ships none: `SequentialMergeBatchNorm` + each "
    "InvertedResidual's residual add -> `zennit.layer.Sum` + the functional global average pool -> an "
    "`nn.AdaptiveAvgPool2d` module, so both get the Norm rule). Ours: `LrpParams::new(composite)` with "
    "`merge_convention: MergeConvention::KeepEps` (zennit 0.5.1's merge).",
    "- Vision transformers (vit_b_16, deit_small_patch16_224): grad-cam, lrp-cp, lrp-attn, attention-rollout and "
    "generic-attention run `scripts/make_vit_fixtures.py`'s recipes (pytorch-grad-cam's, lxt 2.1's CP-LRP and "
    "AttnLRP, pnpxai's rollout, Chefer et al. 2021), imported; `scripts/bench_torch.py` says what each does.",
    "- The torch models have out-of-place ReLU/ReLU6 (zennit's hooks want them) and parameters with "
    "`requires_grad=False` (both sides differentiate with respect to the input only).",
    "",
    "## Machine",
    "",
    f"- CPU: {env['CPU_MODEL']}, `nproc` = {env['NPROC']}, {env['CPU_SIMD']}",
    f"- threads: PyTorch `torch.set_num_threads({facts['threads']})`; candle-xai {', '.join(map(str, ours_threads))} "
    "(candle's default: `RAYON_NUM_THREADS`, else all cores)",
    f"- torch {facts['torch']}, torchvision {facts['torchvision']}, captum {facts['captum']}, zennit {facts['zennit']}"
    + "".join(f", {name} {facts[name]}" for name in ("timm", "lxt") if name in facts),
    f"- candle {env['CANDLE_VERSION']}, {env['RUSTC_VERSION']}, `--release`",
    f"- date: {env['DATE']}, commit {env['COMMIT']}",
    "",
    "## Reproduce",
    "",
    "```sh",
    env["command_line"],
    "```",
    "",
    "Raw rows: `WORK_DIR/torch.jsonl` and `WORK_DIR/ours.jsonl` (default `/tmp/candle-xai-bench`).",
    "",
]
with open(env["OUT"], "w") as f:
    f.write("\n".join(lines))
print("\n".join(lines))
EOF

# Optional: the browser's engine (wasm in headless Chromium) vs native, on the page's MobileNetV2 and
# cat photo (scripts/bench_web.mjs); needs dist/ (trunk build --release) with the default model,
# node with playwright-core (npm ci) and Chromium. Appended to $OUT.
if [ "${WEB:-1}" != 0 ] && [ -s dist/candle-xai_bg.wasm ] && [ -s dist/web/assets/model/mobilenet_v2.safetensors ] \
    && command -v node >/dev/null && [ -d node_modules/playwright-core ]; then
    echo "== browser (wasm CPU) vs native CPU" >&2
    if node scripts/bench_web.mjs --reps "$REPS" --out "$WORK_DIR/web.md" | tee "$WORK_DIR/web.jsonl" >&2; then
        {
            printf '\n## Browser (wasm CPU) vs native CPU\n\n'
            cat "$WORK_DIR/web.md"
            printf '\n```sh\nnode scripts/bench_web.mjs --reps %s\n```\n\n' "$REPS"
            echo "Raw rows: \`WORK_DIR/web.jsonl\`."
        } > "$WORK_DIR/web-section.md"
        cat "$WORK_DIR/web-section.md" >> "$OUT"
        cat "$WORK_DIR/web-section.md"
    else
        echo "warning: scripts/bench_web.mjs failed; $OUT has no browser section" >&2
    fi
else
    echo "== no browser benchmark (WEB=0, or it needs dist/ with the default model, node and node_modules/playwright-core)" >&2
fi
echo "== wrote $OUT" >&2
