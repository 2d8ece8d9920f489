#!/usr/bin/env bash
# Interleaved (ABBA) rounds of two criterion bench binaries on one filter:
# each round runs A, B, B, A and reports per benchmark the median of A's two
# medians and of B's, and their ratio B/A; at the end, the median and the
# range of the per-round ratios. Both binaries are `cargo bench --no-run`
# executables (e.g. of two commits); the machine's drift hits both alike.
#   lab/abba.sh OLD_BENCH NEW_BENCH FILTER [ROUNDS]
#   e.g. lab/abba.sh /tmp/bench_old target/release/deps/mns-* 'avx512/mns/4096x8192' 6
set -euo pipefail
a=$1 b=$2 filter=$3 rounds=${4:-6}
run() { "$1" --bench --noplot "$filter" 2>/dev/null | awk '
    /^[a-z0-9_]+\/[a-z0-9]+\/[0-9x]+/ { name = $1 }
    /time:/ && name != "" { sub(/.*time: *\[/, ""); v = $3; u = $4
              if (u == "s") v *= 1000; else if (u == "µs") v /= 1000
              print name, v; name = "" }'; }
tmp=$(mktemp -d)
for r in $(seq 1 "$rounds"); do
    run "$a" > "$tmp/a1"; run "$b" > "$tmp/b1"; run "$b" > "$tmp/b2"; run "$a" > "$tmp/a2"
    paste "$tmp/a1" "$tmp/a2" "$tmp/b1" "$tmp/b2" | awk -v r="$r" '{
        a = ($2 + $4) / 2; b = ($6 + $8) / 2
        printf "round %d %-32s A %8.2f ms  B %8.2f ms  B/A %.3f\n", r, $1, a, b, b / a }'
done | tee "$tmp/rounds"
echo "--- median and range of the per-round B/A ratios"
awk '{ print $3, $NF }' "$tmp/rounds" | sort -k1,1 -k2,2n | awk '
    { n[$1]++; v[$1, n[$1]] = $2 }
    END { for (k in n) { m = n[k]; med = (m % 2) ? v[k, (m + 1) / 2] : (v[k, m / 2] + v[k, m / 2 + 1]) / 2
          printf "%-32s median %.3f  range %.3f–%.3f  (%d rounds)\n", k, med, v[k, 1], v[k, m], m } }'
rm -rf "$tmp"
