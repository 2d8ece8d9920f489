#!/usr/bin/env bash
# The MNS experiment of EXPERIMENTS.md in one command: 7 configurations × 3
# seeds on the synthetic world, the table (experiments/table.md,
# experiments/results.csv) and the plot (experiments/experiment.png; needs
# matplotlib, installed into benches/peers/.venv if missing). ~8 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run --release --locked --quiet -- experiment --users 10000 --items 20000 --epochs 3 --seeds 3 --out experiments "$@"
VENV=benches/peers/.venv
if [ ! -x "$VENV/bin/python" ]; then python3 -m venv "$VENV"; fi
"$VENV/bin/python" -c 'import matplotlib' 2>/dev/null || "$VENV/bin/pip" install -q --disable-pip-version-check matplotlib
"$VENV/bin/python" scripts/plot_training.py experiments experiments/experiment.png
