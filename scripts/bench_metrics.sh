#!/usr/bin/env bash
# Evaluation metrics on CPU: candle-xai vs pnpxai 0.1.4 vs Quantus 0.6.0, same model (torchvision MobileNetV2,
# web/assets/model/mobilenet_v2.safetensors), same input (web/assets/samples/chelsea.png), same attributions (captum
# Saliency, abs=False), same settings (pnpxai's defaults), one run on this machine. Details: scripts/bench_metrics.py.
#
#   scripts/bench_metrics.sh [reps]       # prints a Markdown table, also written to $OUT (default /tmp/bench_metrics.md)
#
# Knobs (environment): REPS (default 5; the first argument wins), BIN (the candle-xai binary; default: built here
# with `cargo build --release --bin candle-xai`, then target/release/candle-xai), PYTHON (default
# /work/venv-ref/bin/python: the venv of scripts/requirements-fixtures.txt plus
# scripts/requirements-metric-fixtures.txt, which has pnpxai and quantus), THREADS (torch.set_num_threads, default 2),
# METRICS (comma-separated subset of abpc,morf,lerf,mu-fidelity,sensitivity,complexity), WAIT_FILE (wait until this
# file exists before the timed runs, polling every 10 s, at most WAIT_MAX_S seconds, default 2400; a file older than
# the wait also needs a quiet machine: see wait_for in bench_metrics.py), OUT, JSON_OUT (raw times),
# WORK_DIR (default: a new temporary directory, removed at the end), SMOKE=1 (tiny settings, 1 rep: a harness check),
# MAX_FOREIGN (default 0.25) and QUIET_BUDGET_S (default 1800): each interleaved (ours, pnpxai, quantus) triple starts
# when other processes use < MAX_FOREIGN cores, and is redone (up to 3 times) when they used more during it; all those
# waits together take at most QUIET_BUDGET_S (see QuietGuard in bench_metrics.py; the report counts the redone ones).
#
#   e.g. BIN=/tmp/bench-bin-frozen/candle-xai WAIT_FILE=/tmp/bench-go scripts/bench_metrics.sh
set -euo pipefail

cd "$(dirname "$0")/.."
REPS=${1:-${REPS:-5}}
PYTHON=${PYTHON:-/work/venv-ref/bin/python}
THREADS=${THREADS:-2}
OUT=${OUT:-/tmp/bench_metrics.md}
if [ -z "${BIN:-}" ]; then
    cargo build --release --bin candle-xai >&2
    BIN=target/release/candle-xai
fi
BIN=$(realpath "$BIN")
if [ -z "${WORK_DIR:-}" ]; then
    WORK_DIR=$(mktemp -d /tmp/bench-metrics.XXXXXX)
    trap 'rm -rf "$WORK_DIR"' EXIT
fi

command_line="scripts/bench_metrics.sh $REPS"
for var in BIN THREADS METRICS WAIT_FILE SMOKE; do
    if [ -n "${!var:-}" ] && ! { [ "$var" = THREADS ] && [ "$THREADS" = 2 ]; }; then
        command_line="$var=${!var} $command_line"
    fi
done

echo "== inputs and attributions -> $WORK_DIR" >&2
"$PYTHON" scripts/bench_metrics.py prepare --work-dir "$WORK_DIR" --threads "$THREADS"

args=(run --work-dir "$WORK_DIR" --bin "$BIN" --reps "$REPS" --threads "$THREADS" --out "$OUT"
      --command "$command_line")
[ -n "${METRICS:-}" ] && args+=(--metrics "$METRICS")
[ -n "${WAIT_FILE:-}" ] && args+=(--wait-file "$WAIT_FILE" --wait-max-s "${WAIT_MAX_S:-2400}")
[ -n "${JSON_OUT:-}" ] && args+=(--json-out "$JSON_OUT")
[ -n "${MAX_FOREIGN:-}" ] && args+=(--max-foreign "$MAX_FOREIGN")
[ -n "${QUIET_BUDGET_S:-}" ] && args+=(--quiet-budget-s "$QUIET_BUDGET_S")
[ "${SMOKE:-0}" = 1 ] && args+=(--smoke)
echo "== timing (ours, pnpxai, quantus interleaved)" >&2
"$PYTHON" -W ignore scripts/bench_metrics.py "${args[@]}"
