#!/usr/bin/env bash
# The GPU check, in one call on a machine with an NVIDIA GPU and no Rust
# toolchain, from the repository root, after scripts/gpu_bundle.sh built
# gpu_bundle/ elsewhere. Every phase is time-boxed (`timeout`), prints its
# exit code, and logs to $OUT (default /tmp/gpu_check): check.log (all of
# it), one log per phase, times.txt and table.md. Phases:
#   0. preflight: GPU and driver (nvidia-smi), NVRTC 13, the bundle, Python
#      and torch (version, CUDA, TF32 flags) — without a GPU or the bundle it
#      stops here, in seconds, with exit code 3;
#   1. the NVRTC/ptxas test and the GPU tests against the f64 reference
#      (REQUIRE_GPU=1);
#   2. a large-shape accuracy check: `mixneg demo --backend cuda` at
#      (16384, 16384, 128) checks 128 rows against the f64 reference, at
#      the default F32 tier (3xTF32) and at bf16;
#   3. gpu-bench (device-resident, CUDA events; the SIMT kernels and the
#      tensor-core ones at F32 = 3xTF32, TF32 and bf16) and PyTorch eager
#      (fp32, TF32, bf16 autocast) and torch.compile on the same data
#      (scripts/torch_peer.py) at
#      (16384, 16384, 128), (8192, 65536, 64), (4096, 4096, 64);
#   4. if at least 90 s of the budget are left: compute-sanitizer memcheck
#      and racecheck on a small case.
# GPU_CHECK_BUDGET (seconds, default 360) bounds the whole run.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
exec > >(tee "$OUT/check.log") 2>&1
START=$(date +%s)
BUDGET=${GPU_CHECK_BUDGET:-360}
left() { echo $((BUDGET - ($(date +%s) - START))); }
# phase NAME SECONDS COMMAND...: run time-boxed, log to $OUT/NAME.log, print rc.
phase() {
    local name=$1 secs=$2
    shift 2
    local l
    l=$(left)
    [ "$secs" -gt "$l" ] && secs=$l
    if [ "$secs" -le 5 ]; then
        echo "[$name] skipped: budget spent"
        return 124
    fi
    echo "[$name] (≤ ${secs} s): $*"
    timeout --kill-after=10 "$secs" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    tail -n 25 "$OUT/$name.log"
    echo "[$name] exit code $rc after $(( $(date +%s) - START )) s"
    return $rc
}

echo "== 0. preflight"
fail=0
if command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader; then
    :
else
    echo "preflight: no NVIDIA GPU or driver (nvidia-smi missing or failing)"
    fail=1
fi
NVRTC=$( (ldconfig -p 2>/dev/null | awk '/libnvrtc\.so\.13/ {print $NF; exit}'); timeout 10 find /usr/local /usr/lib /opt .venv -name 'libnvrtc.so.13' 2>/dev/null | head -n 1)
NVRTC=$(echo "$NVRTC" | grep -m1 . || true)
if [ -n "$NVRTC" ]; then
    export LD_LIBRARY_PATH="$(dirname "$NVRTC")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    echo "NVRTC: $NVRTC"
else
    echo "preflight: libnvrtc.so.13 not found"
    fail=1
fi
for exe in mixneg cuda_ptx cuda_vs_reference; do
    [ -x "gpu_bundle/$exe" ] || { echo "preflight: gpu_bundle/$exe missing (run scripts/gpu_bundle.sh where Rust is)"; fail=1; }
done
PY=${PYTHON:-python3}
timeout 60 "$PY" - <<'PYEOF' || echo "preflight: torch not importable (the PyTorch comparison will fail)"
import torch
print("torch", torch.__version__, "CUDA", torch.version.cuda, "available", torch.cuda.is_available())
print("TF32: matmul.allow_tf32 =", torch.backends.cuda.matmul.allow_tf32,
      "cudnn.allow_tf32 =", torch.backends.cudnn.allow_tf32,
      "float32_matmul_precision =", torch.get_float32_matmul_precision())
PYEOF
if [ "$fail" != 0 ]; then
    echo "preflight failed: stopping (exit code 3) after $(( $(date +%s) - START )) s"
    exit 3
fi

echo "== 1. tests"
phase ptx 60 env REQUIRE_NVRTC=1 ./gpu_bundle/cuda_ptx --nocapture
phase gpu_tests 120 env REQUIRE_GPU=1 MIXNEG_VECTORS=tests/vectors ./gpu_bundle/cuda_vs_reference

echo "== 2. large-shape accuracy"
phase accuracy 60 ./gpu_bundle/mixneg demo --backend cuda --batch 16384 --b-prime 16384 --dim 128 --reps 3
phase accuracy_bf16 45 ./gpu_bundle/mixneg demo --backend cuda --precision bf16 --batch 16384 --b-prime 16384 --dim 128 --reps 3

echo "== 3. timings"
RES=$OUT/times.txt
: > "$RES"
for shape in "16384 16384 128" "8192 65536 64" "4096 4096 64"; do
    set -- $shape
    phase "bench_$1_$2_$3" 60 ./gpu_bundle/mixneg gpu-bench --batch "$1" --b-prime "$2" --dim "$3" --reps 20
    cat "$OUT/bench_$1_$2_$3.log" >> "$RES"
    phase "torch_$1_$2_$3" 120 "$PY" scripts/torch_peer.py "$1" "$2" "$3" --reps 10
    cat "$OUT/torch_$1_$2_$3.log" >> "$RES"
done
"$PY" - "$RES" > "$OUT/table.md" <<'PY'
import re, sys
rows = {}
pat = (r"(mixneg cuda \S+(?: \[[^\]]+\])?|torch eager[^:]*|torch\.compile): B = (\d+), B' = (\d+), K = (\d+): "
       r"loss (\S+), median (\S+) ms.*?([\d.]+) effective TFLOP/s, (?:peak )?device memory ([\d.]+) MiB")
for line in open(sys.argv[1]):
    m = re.match(pat, line)
    if m:
        name, b, bp, k, loss, ms, tf, mem = m.groups()
        name = re.sub(r" sm_\d+", "", name)
        rows.setdefault((b, bp, k), []).append((name, float(ms), float(tf), float(mem), loss))
# The bar of issue 15 reads off the last two columns: eager fp32's time and
# peak memory over each row's.
print("| (B, B', K) | implementation | ms | TFLOP/s | memory MiB | loss | eager fp32 ÷ this: time | memory |")
print("|---|---|---|---|---|---|---|---|")
for shape, rs in rows.items():
    eager = next((r for r in rs if r[0] == "torch eager"), None)
    for name, ms, tf, mem, loss in rs:
        t = f"{eager[1] / ms:.2f}x" if eager else ""
        mm = f"{eager[3] / mem:.1f}x" if eager and mem > 0 else ""
        print(f"| {', '.join(shape)} | {name} | {ms:.2f} | {tf:.1f} | {mem:.0f} | {loss} | {t} | {mm} |")
PY
cat "$OUT/table.md"

echo "== 4. compute-sanitizer"
if command -v compute-sanitizer >/dev/null && [ "$(left)" -ge 90 ]; then
    for tool in memcheck racecheck; do
        phase "sanitizer_$tool" 40 compute-sanitizer --tool "$tool" --error-exitcode 9 \
            ./gpu_bundle/mixneg demo --backend cuda --batch 300 --b-prime 200 --dim 40 --reps 1
    done
else
    echo "skipped: compute-sanitizer missing or under 90 s of budget left ($(left) s)"
fi
echo "done in $(( $(date +%s) - START )) s; logs and table.md in $OUT"
