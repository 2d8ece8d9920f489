#!/usr/bin/env bash
# mixneg against NumPy, JAX (jit of value_and_grad) and, opt-in, PyTorch
# (eager, torch.compile and its fused F.linear_cross_entropy, chunked and the
# reference path, on the problem it can express: no ids, against
# `mixneg demo --no-ids`), in one run, same shapes, same data, 2 threads.
# Installs its Python dependencies into lab/.venv (NumPy, JAX CPU,
# matplotlib: < 1 minute). PyTorch's PyPI wheel pulls ~6 GB of CUDA wheels,
# so it is only installed and run with PEERS_TORCH=1.
#
#   lab/peers.sh            # results in lab/peers_results.csv and a table on stdout
#   PEERS_SHAPES="4096,4096,64" PEERS_ROUNDS=5 lab/peers.sh
#
# Beside the peers, each round also times numpy.products and jax.products:
# that library's BLAS doing only the loss's three products (U·Vᵀ, S·V, Sᵀ·U,
# the same 6·B·N·K flops, no softmax) — the floor under any implementation of
# the loss built on it, and so how far "N× faster than the peer" can go.
#
# Every shape is measured in PEERS_ROUNDS (default 3) interleaved rounds —
# mixneg, then each peer, then again — because this kind of shared host
# drifts by tens of percent over minutes: the table gives the median over
# rounds and the median of the per-round ratios (each ratio taken between
# runs seconds apart), with their ranges.
set -euo pipefail
cd "$(dirname "$0")/.."
HERE=lab
VENV=${PEERS_VENV:-$HERE/.venv}  # PEERS_VENV: an existing venv to use instead
if [ ! -x "$VENV/bin/python" ]; then python3 -m venv "$VENV"; fi
"$VENV/bin/pip" install -q --disable-pip-version-check numpy "jax[cpu]" matplotlib
IMPLS="numpy jax"
# mixneg's own rows: with ids (the peers above) and without (the problem
# PyTorch's fused loss can express; its rows are compared with this one).
MIXNEG_RUNS="mixneg"
if [ "${PEERS_TORCH:-0}" = 1 ]; then
    "$VENV/bin/pip" install -q --disable-pip-version-check torch
    IMPLS="$IMPLS torch torch.compile torch.lce torch.lce-ref"
    MIXNEG_RUNS="mixneg mixneg/no-ids"
fi
cargo build --release --locked --bin mixneg 2>&1 | tail -n 1

export THREADS=${THREADS:-2}
export RAYON_NUM_THREADS=$THREADS OMP_NUM_THREADS=$THREADS OPENBLAS_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS
export XLA_FLAGS="--xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads=$THREADS"
PY="$VENV/bin/python"

# peak RSS (MiB) and the program's last line, for one command
measure() {
    local log; log=$(mktemp)
    /usr/bin/time -v "$@" >"$log.out" 2>"$log" || { echo "FAILED: $*" >&2; tail -n 3 "$log" >&2; rm -f "$log" "$log.out"; return 1; }
    local rss; rss=$(awk '/Maximum resident set size/ {printf "%.0f", $NF/1024}' "$log")
    echo "$rss|$(grep -E 'median' "$log.out" | tail -n 1)"
    rm -f "$log" "$log.out"
}

echo "== agreement on a small case (B = 256, B' = 768, K = 32): every loss must match mixneg's to 1e-4"
ref_of() { ./target/release/mixneg demo --batch 256 --b-prime 768 --dim 32 --reps 1 --no-check "$@" | awk '/loss/ {print $2}'; }
ids_ref=$(ref_of); no_ids_ref=$(ref_of --no-ids)
echo "mixneg: loss $ids_ref (without ids: $no_ids_ref)"
for impl in $IMPLS; do
    case $impl in *lce*) ref=$no_ids_ref ;; *) ref=$ids_ref ;; esac
    line=$("$PY" $HERE/peers.py "$impl" 256 768 32 --reps 1)
    echo "$line"
    got=$(echo "$line" | sed -E 's/.*loss ([-0-9.e]+),.*/\1/')
    "$PY" -c "import sys; r, g = float('$ref'), float('$got'); sys.exit(0 if abs(r - g) <= 1e-4 * abs(r) else 1)" ||
        { echo "DISAGREEMENT: $impl loss $got vs mixneg $ref" >&2; exit 1; }
done

SHAPES=${PEERS_SHAPES:-"1024,1024,64 4096,4096,64 4096,4096,128 16384,16384,64"}
ROUNDS=${PEERS_ROUNDS:-3}
echo "== kernel: $(./target/release/mixneg demo --batch 16 --b-prime 16 --dim 8 --reps 1 --no-check | grep -o 'cpu/[a-z0-9_]*' | head -n 1)"
CSV=$HERE/peers_results.csv
echo "b,b_prime,k,round,impl,median_ms,gflops,peak_rss_mib" > "$CSV"
for shape in $SHAPES; do
    IFS=, read -r b bp k <<<"$shape"
    n=$((b + bp)); flops=$((6 * b * n * k))
    reps=$(( b >= 16384 ? 3 : 10 ))
    for round in $(seq "$ROUNDS"); do
        for run in $MIXNEG_RUNS; do
            flag=""; [ "$run" = mixneg ] || flag=--no-ids
            r=$(measure ./target/release/mixneg demo --batch "$b" --b-prime "$bp" --dim "$k" --reps "$reps" --no-check $flag) || continue
            ms=$(echo "$r" | sed -E 's/.*median ([0-9.]+) ms.*/\1/')
            echo "$b,$bp,$k,$round,$run,$ms,$(python3 -c "print(round($flops/$ms/1e6,1))"),${r%%|*}" | tee -a "$CSV"
        done
        for impl in $IMPLS numpy.products jax.products; do
            r=$(measure "$PY" $HERE/peers.py "$impl" "$b" "$bp" "$k" --reps $(( b >= 16384 ? 2 : 5 ))) || continue
            ms=$(echo "$r" | sed -E 's/.*median ([0-9.]+) ms.*/\1/')
            echo "$b,$bp,$k,$round,$impl,$ms,$(python3 -c "print(round($flops/$ms/1e6,1))"),${r%%|*}" | tee -a "$CSV"
        done
    done
done

echo
"$PY" - "$CSV" <<'PY'
import csv, sys
from statistics import median
rows = list(csv.DictReader(open(sys.argv[1])))
shape = lambda r: (int(r["b"]), int(r["b_prime"]), int(r["k"]))
ms = {(shape(r), r["round"], r["impl"]): float(r["median_ms"]) for r in rows}
rss = {}
for r in rows:
    key = (shape(r), r["impl"])
    rss[key] = max(rss.get(key, 0), int(r["peak_rss_mib"]))
print("| (B, B′, K) | implementation | median ms over rounds (range) | effective GFLOP/s | peak RSS MiB | time vs mixneg (lce rows: vs mixneg/no-ids), median of rounds (range) | RSS vs the same |")
print("|---|---|---|---|---|---|---|")
for s, impl in dict.fromkeys((shape(r), r["impl"]) for r in rows):
    rounds = sorted({r["round"] for r in rows if shape(r) == s and r["impl"] == impl})
    t = [ms[(s, q, impl)] for q in rounds]
    # PyTorch's fused loss solves the problem without ids: compared with mixneg's.
    base = "mixneg/no-ids" if "lce" in impl else "mixneg"
    ratios = [ms[(s, q, impl)] / ms[(s, q, base)] for q in rounds if (s, q, base) in ms]
    gf = 6 * s[0] * (s[0] + s[1]) * s[2] / median(t) / 1e6
    m = rss[(s, impl)] / rss[(s, base)]
    print(f"| {s[0]}, {s[1]}, {s[2]} | {impl} | {median(t):.1f} ({min(t):.0f}–{max(t):.0f}) | {gf:.1f} | {rss[(s, impl)]} "
          f"| {median(ratios):.2f}× ({min(ratios):.2f}–{max(ratios):.2f}) | {m:.1f}× |")
PY
