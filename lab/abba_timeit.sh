#!/usr/bin/env bash
# Interleaved (ABBA) rounds of two `timeit` example binaries (e.g. of two
# commits, built with CARGO_TARGET_DIR elsewhere): each round runs A, B, B, A
# at one shape and prints, for each tier the binaries time (F32, and Bf16
# on a CPU with AVX512_BF16), both medians (ms) and B/A.
#   lab/abba_timeit.sh OLD_TIMEIT NEW_TIMEIT ROUNDS REPS "B BP K" ["B BP K" ...]
set -euo pipefail
old=$1 new=$2 rounds=$3 reps=$4; shift 4
for s in "$@"; do
  for r in $(seq 1 $rounds); do
    t() { RAYON_NUM_THREADS=2 $1 $s $reps; }
    a1=$(t $old); b1=$(t $new); b2=$(t $new); a2=$(t $old)
    for tier in F32 Bf16; do
      m() { awk -v t=" $tier:" 'index($0, t){print $5}' <<<"$1"; }
      [ -n "$(m "$a1")" ] || continue
      echo "$tier $s round $r A $(m "$a1") $(m "$a2") B $(m "$b1") $(m "$b2")" |
        awk '{a=($7+$8)/2; b=($10+$11)/2; printf "%s B/A %.3f\n", $0, b/a}'
    done
  done
done
