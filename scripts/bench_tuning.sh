#!/usr/bin/env bash
# Tuning quality: `candle-xai optimize` against pnpxai 0.1.4's optimizer (optuna TPE), tuning
# LRP epsilon-gamma-box for AbPC on MobileNetV2 and the three sample photos; see
# scripts/bench_tuning.py for what each side searches. Prints a Markdown table (also to $MD).
#
#   scripts/bench_tuning.sh                      # from the repository root
#
# Environment (defaults in brackets):
#   BIN       candle-xai binary [/tmp/tune-bin/candle-xai; copied from target/release if absent]
#   PY        Python with torch, torchvision, safetensors, pnpxai 0.1.4 and optuna [/work/venv-ref/bin/python]
#   PHOTOS    [chelsea coffee astronaut]      SEEDS   [0 1 2]      N_TRIALS  [50]
#   TOOLS     [ours pnpxai-matched pnpxai-stock]; SEED0_TOOLS [ours-pool]: only for the first seed
#             ours: --fixed-pooling --pooling none (epsilon, gamma); ours-pool: --pooling sumpos
#             (epsilon, gamma, pooling); pnpxai-matched: pnpxai's optimizer on our objective
#             (epsilon, gamma); pnpxai-stock: pnpxai 0.1.4 as shipped. Details: bench_tuning.py
#   DIR       work folder [/tmp/bench_tuning]  (runs/, results.jsonl, spot.json; results.jsonl starts anew)
#   MD        Markdown table [/tmp/bench_tuning.md]
#   SPOT      1: first check one configuration both ways (AbPC pnpxai vs ours) [1]
# Runs are interleaved per (photo, seed): ours, then each pnpxai variant.
# Setup of the Python side: scripts/make_metric_fixtures.py's venv (pnpxai 0.1.4 --no-deps), plus
#   $PY -m pip install --no-deps optuna==4.1.0 alembic==1.14.0 sqlalchemy==2.0.36 colorlog==6.9.0 Mako==1.3.6
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BIN:-/tmp/tune-bin/candle-xai}
PY=${PY:-/work/venv-ref/bin/python}
PHOTOS=${PHOTOS:-chelsea coffee astronaut}
SEEDS=${SEEDS:-0 1 2}
N_TRIALS=${N_TRIALS:-50}
TOOLS=${TOOLS:-ours pnpxai-matched pnpxai-stock}
SEED0_TOOLS=${SEED0_TOOLS-ours-pool}
DIR=${DIR:-/tmp/bench_tuning}
MD=${MD:-/tmp/bench_tuning.md}
SPOT=${SPOT:-1}

if [ ! -x "$BIN" ]; then
    mkdir -p "$(dirname "$BIN")"
    cp target/release/candle-xai "$BIN"
fi
mkdir -p "$DIR/runs"
rm -f "$DIR/results.jsonl"
now() { date +%s.%N; }
elapsed() { "$PY" -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.3f}')" "$1" "$2"; }

"$PY" scripts/bench_tuning.py prep --out "$DIR" >&2
if [ "$SPOT" = 1 ]; then
    "$PY" scripts/bench_tuning.py spot --dir "$DIR" --bin "$BIN" >&2
fi

for photo in $PHOTOS; do
    for seed in $SEEDS; do
        tools=$TOOLS
        [ "$seed" = "${SEEDS%% *}" ] && tools="$TOOLS $SEED0_TOOLS"
        for tool in $tools; do
            out="$DIR/runs/$photo-s$seed-$tool-n$N_TRIALS.json"
            t0=$(now)
            case $tool in
                ours|ours-pool)
                    if [ "$tool" = ours ]; then pooling=(--fixed-pooling --pooling none); else pooling=(--pooling sumpos); fi
                    "$BIN" optimize --model web/assets/model/mobilenet_v2.safetensors \
                        --input "$DIR/$photo.safetensors" --method lrp-epsilon-gamma-box --metric abpc \
                        "${pooling[@]}" --n-trials "$N_TRIALS" --seed "$seed" --out "$out" >&2 ;;
                pnpxai-*)
                    "$PY" scripts/bench_tuning.py pnpxai --input "$DIR/$photo.safetensors" --seed "$seed" \
                        --n-trials "$N_TRIALS" --variant "${tool#pnpxai-}" --out "$out" >&2 ;;
                *) echo "unknown tool $tool" >&2; exit 2 ;;
            esac
            t1=$(now)
            wall=$(elapsed "$t0" "$t1")
            echo "$photo seed $seed $tool: ${wall} s (load $(cut -d" " -f1-3 /proc/loadavg))" >&2
            "$PY" scripts/bench_tuning.py record --dir "$DIR" --tool "$tool" --photo "$photo" --seed "$seed" \
                --json "$out" --wall "$wall"
        done
    done
done

# not timed: the most pnpxai-stock's search could find (its 20 reachable configurations)
case " $TOOLS $SEED0_TOOLS " in *" pnpxai-stock "*) "$PY" scripts/bench_tuning.py stock-ceiling --dir "$DIR" >&2 || echo "stock-ceiling failed" >&2 ;; esac
"$PY" scripts/bench_tuning.py report --dir "$DIR" --md "$MD"
