#!/usr/bin/env bash
# The scale run: the fused CPU loss at B = 65536, B' = 262144, K = 128 (the
# logits alone would be 65536 × 327680 × 4 B = 80 GiB), one repetition, with
# the whole process's peak RSS. Prints the demo's line and the RSS.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --bin mixneg 2>&1 | tail -n 1
/usr/bin/time -v ./target/release/mixneg demo --batch "${B:-65536}" --b-prime "${BP:-262144}" --dim "${K:-128}" --reps 1 --no-check 2>&1 |
    grep -E "mixneg demo|loss|Maximum resident|Elapsed"
