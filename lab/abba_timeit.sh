#!/usr/bin/env bash
# Interleaved (ABBA) rounds of two `timeit` example binaries (e.g. of two
# commits, built with CARGO_TARGET_DIR elsewhere), F32 call only: each round
# runs A, B, B, A at one shape and prints both medians and B/A.
#   lab/abba_timeit.sh OLD_TIMEIT NEW_TIMEIT ROUNDS REPS "B BP K" ["B BP K" ...]
set -euo pipefail
old=$1 new=$2 rounds=$3 reps=$4; shift 4
for s in "$@"; do
  for r in $(seq 1 $rounds); do
    t() { RAYON_NUM_THREADS=2 $1 $s $reps | awk '/ F32:/{print $5}'; }
    a1=$(t $old); b1=$(t $new); b2=$(t $new); a2=$(t $old)
    echo "$s round $r A $a1 $a2 B $b1 $b2" | awk '{a=($6+$7)/2; b=($9+$10)/2; printf "%s B/A %.3f\n", $0, b/a}'
  done
done
