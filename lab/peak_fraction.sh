#!/usr/bin/env bash
# The Rust call's share of the FMA peak, measured in one run: ROUNDS rounds
# (default 5), each the FMA loop on 2 threads (one round of examples/fma_peak)
# and then `timeit` at each shape (5 calls, both tiers this CPU computes), so
# that every call is compared with the peak measured just before it. Prints
# the rows and, per shape, the median over rounds of F32's share of the
# peak and of the per-round F32 ÷ Bf16 time.
#
#   lab/peak_fraction.sh > lab/peak_fraction_run.log
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-5}
SHAPES=${SHAPES:-"4096,4096,64 4096,4096,128 16384,16384,64"}
cargo build --release --locked --example timeit --example fma_peak -q
export RAYON_NUM_THREADS=2
log=$(mktemp)
echo "== $(date -u) $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
for r in $(seq "$ROUNDS"); do
    peak=$(target/release/examples/fma_peak 2 1 | awk '/avx512/ {print $(NF-1) + $NF}')
    for s in $SHAPES; do
        out=$(target/release/examples/timeit ${s//,/ } 5)
        echo "$out" | sed "s/^/round $r peak $peak | /" | tee -a "$log"
    done
done
python3 - "$log" <<'PY'
import re, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    m = re.match(r"round (\d+) peak ([\d.]+) \| cpu/\S+ (\d+)x(\d+)x(\d+) (F32|Bf16): median ([\d.]+) ms", line)
    if m:
        r, peak, b, n, k, tier, ms = m.groups()
        rows.setdefault((int(b), int(n), int(k)), {}).setdefault(int(r), {})[tier] = (float(ms), float(peak))
print("\n| (B, N, K) | F32 median ms | F32 share of the peak, per-round median (range) | Bf16 median ms | F32 ÷ Bf16 time, median (range) |")
print("|---|---|---|---|---|")
for (b, n, k), per in rows.items():
    f = 6 * b * n * k
    share = [f / (x["F32"][0] * 1e6) / x["F32"][1] for x in per.values()]
    f32 = [x["F32"][0] for x in per.values()]
    line = f"| {b}, {n}, {k} | {statistics.median(f32):.1f} | {100 * statistics.median(share):.0f}% ({100 * min(share):.0f}–{100 * max(share):.0f}%) |"
    if all("Bf16" in x for x in per.values()):
        sp = [x["F32"][0] / x["Bf16"][0] for x in per.values()]
        line += f" {statistics.median(x['Bf16'][0] for x in per.values()):.1f} | {statistics.median(sp):.2f}× ({min(sp):.2f}–{max(sp):.2f}) |"
    else:
        line += " — | — |"
    print(line)
PY
rm -f "$log"
