#!/usr/bin/env bash
# The GPU check: one command, run once, on a machine with an NVIDIA GPU, no
# Rust toolchain and no network, from the repository root.
#
# Here, first:   scripts/gpu_bundle.sh     (binaries + wheels into gpu_bundle/)
#                scripts/gpu_check.sh      (the dry run: stops in preflight, exit 3)
# The device call (the tool `device`, verb `run`), exactly:
#   command:   scripts/gpu_check.sh
#   timeout_s: 450
#   carry:     ["gpu_bundle"]
# (the working tree and the bundle together are ~20 MiB of the 64 allowed;
# gpu_bundle.sh checks it). GPU_CHECK_PLUMBING=1 skips the GPU's preflight
# check, to exercise the script itself where there is none (every GPU phase
# then fails). GPU_CHECK_BUDGET (seconds, default 380) bounds
# the phases, leaving the rest of timeout_s for the archive, and about 7
# minutes of a 15-minute lease for a shorter rerun (the H200 run of
# 2026-12-04 took 326 s of phases without the profile).
#
# What comes back ($OUT, default /tmp/gpu_check; 5 files):
#   summary.txt   pass/fail per phase with exit codes and seconds (also
#                 printed last on stdout)
#   table.md      the timings: every implementation on the same data, with
#                 ratios to eager fp32, and mixneg's per-launch breakdown
#   blocks.md     phase 0's building-block errors and verdicts
#   peers.csv     the timing rows, machine-readable
#   logs.tar.gz   every phase's full log
#
# Phases, ordered by value, each time-boxed:
#   preflight  GPU and driver, NVRTC 13, the bundle, python3 with torch and
#              CuPy; the wheels installed into /tmp/site. Without a GPU or the
#              bundle it stops here, in seconds, with exit code 3.
#   0 blocks   the tensor-core and cp.async building blocks alone, through
#              CuPy (scripts/gpu_blocks.py): a wrong fragment layout told
#              apart from a thin accuracy margin; no Rust binary involved.
#   compile    the first backend compiles the kernels with NVRTC (its time is
#              printed) into a CUBIN cache every later process reuses.
#   1 accuracy `mixneg demo --backend cuda` at (16384, 16384, 128) per tier;
#              128 rows against the f64 reference (F32 judged by the crate's
#              bar: loss 1e-6, gradients 1e-5 relative).
#   2 timings  at (16384, 16384, 128) and (8192, 65536, 64): gpu-bench (each
#              launch timed on its own events) and lab/gpu_peers.py
#              (mixneg.torch per tier, PyTorch eager/TF32/bf16-autocast,
#              torch.compile, F.linear_cross_entropy, Liger, CCE; losses
#              checked before timing; peak device memory).
#   3 profile  Nsight Compute's speed-of-light, occupancy and launch figures
#              of the tensor-core kernels (f32, bf16) at (16384, 16384, 128),
#              if at least 40 s are left (what holds the kernels back).
#   4 rust     the GPU tests against the f64 reference, the SIMT kernels and
#              the tensor-core kernels in separate processes.
#   5 python   mixneg.torch's CUDA tests (REQUIRE_GPU=1).
#   6 sanitize compute-sanitizer memcheck and racecheck on a small case, if
#              at least 60 s of the budget are left.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
LOGS=$(mktemp -d /tmp/gpu_check_logs.XXXXXX)
START=$(date +%s)
BUDGET=${GPU_CHECK_BUDGET:-380}
SUMMARY=$LOGS/summary.txt
: > "$SUMMARY"
exec > >(tee "$LOGS/check.log") 2>&1
elapsed() { echo $(($(date +%s) - START)); }
left() { echo $((BUDGET - $(elapsed))); }
note() { echo "$*" | tee -a "$SUMMARY" >/dev/null; }

# Whatever happens (a phase's failure, the budget, a signal), the summary,
# the table and the archive are written.
finish() {
    local rc=$?
    trap - EXIT
    [ -f "$LOGS/peers.csv" ] && cp "$LOGS/peers.csv" "$OUT/peers.csv"
    [ -f "$LOGS/blocks.md" ] && cp "$LOGS/blocks.md" "$OUT/blocks.md"
    [ -f "$LOGS/table.md" ] && cp "$LOGS/table.md" "$OUT/table.md"
    echo "total $(elapsed) s, exit code $rc" >> "$SUMMARY"
    cp "$SUMMARY" "$OUT/summary.txt"
    sleep 0.2  # let tee flush check.log
    tar -czf "$OUT/logs.tar.gz" -C "$LOGS" . 2>/dev/null
    echo "== summary ($OUT: $(cd "$OUT" && ls | tr '\n' ' '))"
    cat "$SUMMARY"
    exit "$rc"
}
trap finish EXIT

# phase NAME SECONDS COMMAND...: run time-boxed, log to $LOGS/NAME.log, record
# pass/fail, exit code and seconds in the summary; returns the exit code.
phase() {
    local name=$1 secs=$2
    shift 2
    local l
    l=$(left)
    [ "$secs" -gt "$l" ] && secs=$l
    if [ "$secs" -le 5 ]; then
        note "$name: skipped (budget spent)"
        return 124
    fi
    echo "[$name] (≤ ${secs} s): $*"
    local t0
    t0=$(date +%s)
    timeout --kill-after=10 "$secs" "$@" > "$LOGS/$name.log" 2>&1
    local rc=$?
    tail -n 30 "$LOGS/$name.log"
    local verdict=pass
    [ $rc -ne 0 ] && verdict=FAIL
    [ $rc -eq 124 ] || [ $rc -eq 137 ] && verdict="FAIL (timed out)"
    note "$name: $verdict (exit code $rc, $(($(date +%s) - t0)) s)"
    return $rc
}

echo "== preflight"
fail=0
if [ "${GPU_CHECK_PLUMBING:-0}" = 1 ]; then
    echo "preflight: GPU_CHECK_PLUMBING=1, no GPU required"
elif command -v nvidia-smi >/dev/null &&
    timeout 10 nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader; then
    :
else
    echo "preflight: no NVIDIA GPU or driver (nvidia-smi missing or failing)"
    fail=1
fi
for f in gpu_bundle/mixneg gpu_bundle/cuda_vs_reference; do
    [ -x "$f" ] || { echo "preflight: $f missing (run scripts/gpu_bundle.sh where Rust is; carry gpu_bundle)"; fail=1; }
done
ls gpu_bundle/wheels/mixneg-*.whl >/dev/null 2>&1 || { echo "preflight: no mixneg wheel in gpu_bundle/wheels"; fail=1; }
if [ "$fail" != 0 ]; then
    note "preflight: FAIL (exit code 3, $(elapsed) s)"
    exit 3
fi
NVRTC=$( (ldconfig -p 2>/dev/null | awk '/libnvrtc\.so\.13 / {print $NF; exit}')
    timeout 10 find /usr/local/cuda* /opt /usr/lib .venv -name 'libnvrtc.so.13' 2>/dev/null | head -n 1)
NVRTC=$(echo "$NVRTC" | grep -m1 . || true)
if [ -n "$NVRTC" ]; then
    export LD_LIBRARY_PATH="$(dirname "$NVRTC")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    echo "NVRTC: $NVRTC"
else
    echo "preflight: libnvrtc.so.13 not found"
    note "preflight: FAIL (no NVRTC 13, exit code 3, $(elapsed) s)"
    exit 3
fi
PY=$(command -v "${PYTHON:-python3}")
rm -rf /tmp/site
if timeout 60 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site gpu_bundle/wheels/*.whl; then
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
else
    echo "preflight: the wheels did not install (the Python phases will fail)"
fi
timeout 60 "$PY" - <<'PYEOF' || echo "preflight: torch not importable (the Python phases will fail)"
import torch
print("torch", torch.__version__, "CUDA", torch.version.cuda, "available", torch.cuda.is_available())
print("TF32: matmul.allow_tf32 =", torch.backends.cuda.matmul.allow_tf32,
      "float32_matmul_precision =", torch.get_float32_matmul_precision())
try:
    import cupy
    print("cupy", cupy.__version__)
except ImportError as e:
    print("cupy: not importable:", e)
import mixneg.torch as mt
print("mixneg CUDA backend:", mt.cuda_unavailable() or "available")
PYEOF
note "preflight: pass ($(elapsed) s)"
export MIXNEG_CACHE_DIR=/tmp/mixneg-cache MIXNEG_LOG_COMPILE=1 REQUIRE_GPU=1 MIXNEG_VECTORS=$REPO/tests/vectors

echo "== 0. building blocks"
phase blocks 40 "$PY" scripts/gpu_blocks.py
cp "$LOGS/blocks.log" "$LOGS/blocks.md"

echo "== compile (NVRTC once; every later process reads the cached CUBIN)"
phase compile 60 ./gpu_bundle/mixneg demo --backend cuda --batch 64 --b-prime 64 --dim 8 --reps 1
grep -h "mixneg: " "$LOGS/compile.log" | tee -a "$SUMMARY"

echo "== 1. large-shape accuracy"
for tier in f32 tf32 bf16; do
    phase "accuracy_$tier" 40 ./gpu_bundle/mixneg demo --backend cuda --precision "$tier" \
        --batch 16384 --b-prime 16384 --dim 128 --reps 3
    grep -h "vs f64 reference" "$LOGS/accuracy_$tier.log" | sed "s/^ */  $tier: /" | tee -a "$SUMMARY"
done
# The F32 tier against the crate's bar.
if ! awk '/vs f64 reference/ { for (i = 1; i <= NF; ++i) if ($i ~ /^[0-9.]+e[-+][0-9]+,?$/) { x = $i; sub(",", "", x); v[++n] = x + 0 } }
          END { exit !(n == 4 && v[1] <= 1e-6 && v[2] <= 1e-5 && v[3] <= 1e-5 && v[4] <= 1e-6) }' "$LOGS/accuracy_f32.log"; then
    note "accuracy_f32: FAIL (outside the bar: loss/lse 1e-6, gradients 1e-5)"
fi

echo "== 2. timings"
for shape in "16384 16384 128" "8192 65536 64"; do
    set -- $shape
    phase "bench_$1_$2_$3" 40 ./gpu_bundle/mixneg gpu-bench --batch "$1" --b-prime "$2" --dim "$3" --reps 20
    phase "peers_$1_$2_$3" 100 "$PY" lab/gpu_peers.py "$1" "$2" "$3" --reps 5 --csv "$LOGS/peers.csv"
done
"$PY" - "$LOGS" > "$LOGS/table.md" <<'PYEOF'
import csv, glob, os, re, sys
logs = sys.argv[1]
path = os.path.join(logs, "peers.csv")
rows = list(csv.DictReader(open(path))) if os.path.exists(path) else []
print("| (B, B', K) | implementation | tier | ms | eff. TFLOP/s | peak MiB | loss check | eager fp32 ÷ this: time | memory |")
print("|---|---|---|---|---|---|---|---|---|")
for r in rows:
    b, bp, k = int(r["b"]), int(r["bp"]), int(r["k"])
    eager = next((e for e in rows if (e["b"], e["bp"], e["k"]) == (r["b"], r["bp"], r["k"]) and e["implementation"] == "torch eager fp32"), None)
    ms, mem = float(r["ms"]), float(r["peak_mib"])
    tf = 6 * b * (b + bp) * k / ms / 1e9
    t = f"{float(eager['ms']) / ms:.2f}x" if eager else ""
    m = f"{float(eager['peak_mib']) / mem:.1f}x" if eager and mem > 0 else ""
    print(f"| {b}, {bp}, {k} | {r['implementation']} | {r['tier']} | {ms:.2f} | {tf:.1f} | {mem:.0f} | {r['loss_check']} | {t} | {m} |")
print()
print("mixneg's launches (gpu-bench, CUDA events around each launch, medians):")
print()
for f in sorted(glob.glob(os.path.join(logs, "bench_*.log"))):
    for line in open(f):
        if line.startswith("mixneg cuda") or line.startswith("  launch"):
            print("    " + line.rstrip())
PYEOF
cat "$LOGS/table.md"

echo "== 3. profile (Nsight Compute: the tensor-core kernels at (16384, 16384, 128))"
if command -v ncu >/dev/null && [ "$(left)" -ge 40 ]; then
    phase ncu 40 ncu --kernel-name regex:'mns_(fwd|dv)_tc_k128_(f32|bf16)' --launch-count 4 \
        --section SpeedOfLight --section Occupancy --section LaunchStats --section ComputeWorkloadAnalysis \
        ./gpu_bundle/mixneg gpu-bench --batch 16384 --b-prime 16384 --dim 128 --reps 1
else
    note "ncu: skipped (ncu missing or under 40 s of budget left: $(left) s)"
fi
echo "== 4. Rust GPU tests (one process per kernel path)"
phase rust_simt 60 env MIXNEG_TEST_PATH=simt ./gpu_bundle/cuda_vs_reference
phase rust_tc 90 env MIXNEG_TEST_PATH=tc ./gpu_bundle/cuda_vs_reference

echo "== 5. Python CUDA tests"
phase python 90 bash -c "cd /tmp && '$PY' -m pytest -q -rs -p no:cacheprovider '$REPO/python/tests/test_torch_cuda.py'"

echo "== 6. compute-sanitizer"
if command -v compute-sanitizer >/dev/null && [ "$(left)" -ge 60 ]; then
    for tool in memcheck racecheck; do
        phase "sanitizer_$tool" 30 compute-sanitizer --tool "$tool" --error-exitcode 9 \
            ./gpu_bundle/mixneg demo --backend cuda --batch 300 --b-prime 200 --dim 40 --reps 1
    done
else
    note "sanitizer: skipped (compute-sanitizer missing or under 60 s of budget left: $(left) s)"
fi
grep -q "FAIL" "$SUMMARY" && exit 1
exit 0
