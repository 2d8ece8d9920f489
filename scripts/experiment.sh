#!/usr/bin/env bash
# The MNS experiment of EXPERIMENTS.md in one command (under an hour on
# 2 cores): the paper world at s_bad ∈ {0, 0.1, 0.3, 0.5}, the
# quality-signal sweep (s_bad = 0.3, 20% fresh good items, q ∈ {0, 0.5, 1}),
# MovieLens-100K and MovieLens-1M (downloaded by scripts/get_movielens.sh),
# 5 seeds each, exact Q, equal budget; then the plots (lab/experiments/*.png;
# matplotlib is installed into lab/.venv if missing).
#   scripts/experiment.sh            the whole experiment into lab/experiments/
#   scripts/experiment.sh --smoke    a short version (~15 s) into target/experiment-smoke/
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --quiet -p mixneg-train
BIN=${MIXNEG_BIN:-target/release/mixneg}
if [ "${1:-}" = "--smoke" ]; then
    OUT=target/experiment-smoke
    SEEDS=2
    PAPER=(--users 600 --items 3000 --train-per-user 15 --epochs 1 --batch 64)
    SUBSET="batch softmax, logQ;MNS B'/B = 1;uniform negatives only;control: batch softmax, logQ, B = 128;control: stream negatives B'/B = 1"
    SWEEP="batch softmax, logQ;MNS B'/B = 1"
    QUALITY=(0 1)
    FULL_PAPER="$SUBSET"
    FULL_ML="$SUBSET"
    ML_FILES=()
else
    OUT=lab/experiments
    SEEDS=5
    PAPER=(--users 5000 --items 25000 --train-per-user 25 --epochs 2 --batch 256)
    ML=(--min-rating 4 --batch 256)
    # The configurations run on s_bad = 0.1 and 0.5 and on ML-1M (all 15 run
    # on s_bad = 0 and 0.3 and on ML-100K): the batch softmax pair, MNS at
    # fixed B, and the two uniform-negative baselines.
    SUBSET="batch softmax, no correction;batch softmax, logQ;MNS B'/B = 0.25;MNS B'/B = 0.5;MNS B'/B = 1;MNS B'/B = 2;MNS B'/B = 4;MNS B'/B = 8;uniform negatives only;production: id-only items, sampled softmax;control: batch softmax, logQ, B = 512;control: stream negatives B'/B = 1"
    SWEEP="batch softmax, logQ;MNS B'/B = 1;control: stream negatives B'/B = 1"
    QUALITY=(0 0.5 1)
    FULL_PAPER=""
    FULL_ML=""
    scripts/get_movielens.sh
    ML_FILES=(ml-100k ml-1m)
fi
mkdir -p "$OUT"
run() { # name, --only list ("" = all), flags...
    local name=$1 only=$2
    shift 2
    echo "== $name"
    if [ -n "$only" ]; then
        "$BIN" experiment --seeds "$SEEDS" --out "$OUT/$name" --only "$only" "$@"
    else
        "$BIN" experiment --seeds "$SEEDS" --out "$OUT/$name" "$@"
    fi > "$OUT/$name.log"
}
t0=$(date +%s)
run paper-sbad0.3 "$FULL_PAPER" --world paper --bad-share 0.3 "${PAPER[@]}"
run paper-sbad0 "$FULL_PAPER" --world paper --bad-share 0 "${PAPER[@]}"
run paper-sbad0.1 "$SUBSET" --world paper --bad-share 0.1 "${PAPER[@]}"
run paper-sbad0.5 "$SUBSET" --world paper --bad-share 0.5 "${PAPER[@]}"
for q in "${QUALITY[@]}"; do
    run "paper-quality$q" "$SWEEP" --world paper --bad-share 0.3 --fresh-share 0.2 --fresh-exposure 1 \
        --quality-signal "$q" "${PAPER[@]}"
done
for m in "${ML_FILES[@]}"; do
    if [ "$m" = ml-100k ]; then only="$FULL_ML"; epochs=3; else only="$SUBSET"; epochs=2; fi
    run "$m" "$only" --logs "data/$m/$m.inter" --epochs "$epochs" "${ML[@]}"
done
echo "experiment: $(( $(date +%s) - t0 )) s"
VENV=lab/.venv
if [ ! -x "$VENV/bin/python" ]; then python3 -m venv "$VENV"; fi
"$VENV/bin/python" -c 'import matplotlib' 2>/dev/null || "$VENV/bin/pip" install -q --disable-pip-version-check matplotlib
"$VENV/bin/python" scripts/plot_experiment.py "$OUT"
