#!/bin/bash
# ABBA rounds of avx512 against amx at one shape, with the AMX probe's speed
# first (run from the repository root after
# `cargo build --release --example timeit` and
# `cargo build --release --manifest-path benches/amx_probe/Cargo.toml`).
# usage: benches/amx_probe/ab.sh ROUNDS B BP K
probe=benches/amx_probe/target/release/amx_probe
for r in $(seq "$1"); do
  p=$($probe | sed -n 1p | sed -E 's/.*L1 32K: ([0-9.]+).*/\1/')
  t() { MIXNEG_CPU_KERNEL=$1 target/release/examples/timeit "$2" "$3" "$4" 3 | sed -E 's/.*median ([0-9.]+) ms.*/\1/'; }
  a1=$(t avx512 "$2" "$3" "$4"); x1=$(t amx "$2" "$3" "$4"); x2=$(t amx "$2" "$3" "$4"); a2=$(t avx512 "$2" "$3" "$4")
  echo "probe L1 ${p} ns/product | avx512 $a1 $a2 ms | amx $x1 $x2 ms | amx/avx512 $(python3 -c "print(round(($x1+$x2)/($a1+$a2),3))")"
done
