#!/usr/bin/env bash
# The GPU check, in one call on a machine with an NVIDIA GPU, from the
# repository root, after scripts/gpu_bundle.sh built gpu_bundle/ elsewhere:
#   1. the GPU tests with REQUIRE_GPU=1 (and the NVRTC/ptxas test);
#   2. mixneg's fused forward+backward (device-resident, CUDA events) against
#      PyTorch eager and torch.compile on the same GPU at
#      (B, B', K) = (16384, 16384, 128), (8192, 65536, 64), (4096, 4096, 64);
#   3. a table: ms, effective TFLOP/s (6·B·N·K / time), peak memory, ratio.
# Writes everything to ${OUT:-/tmp}/gpu_check.log as well.
set -uo pipefail
cd "$(dirname "$0")/.."
LOG=${OUT:-/tmp}/gpu_check.log
exec > >(tee "$LOG") 2>&1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true

# NVRTC 13 from the machine's CUDA installation.
NVRTC=$( (ldconfig -p | awk '/libnvrtc\.so\.13/ {print $NF; exit}') ; find / -name 'libnvrtc.so.13' -not -path '*/proc/*' 2>/dev/null | head -n 1)
NVRTC=$(echo "$NVRTC" | head -n 1)
[ -n "$NVRTC" ] && export LD_LIBRARY_PATH="$(dirname "$NVRTC")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
echo "NVRTC: ${NVRTC:-not found}"

echo "== tests"
REQUIRE_NVRTC=1 ./gpu_bundle/cuda_ptx --nocapture 2>&1 | grep -E "Used|test result|panicked" | head -n 20
REQUIRE_GPU=1 MIXNEG_VECTORS=tests/vectors ./gpu_bundle/cuda_vs_reference 2>&1 | tail -n 15

echo "== timings"
RES=${OUT:-/tmp}/gpu_times.txt
: > "$RES"
for shape in "16384 16384 128" "8192 65536 64" "4096 4096 64"; do
    set -- $shape
    ./gpu_bundle/mixneg gpu-bench --batch "$1" --b-prime "$2" --dim "$3" --reps 20 | tee -a "$RES"
    timeout 240 python3 scripts/torch_peer.py "$1" "$2" "$3" --reps 10 2>&1 | tee -a "$RES"
done

echo "== table"
python3 - "$RES" <<'PY'
import re, sys
rows = {}
for line in open(sys.argv[1]):
    m = re.match(r"(mixneg cuda \S+|torch eager|torch\.compile): B = (\d+), B' = (\d+), K = (\d+): loss (\S+), median (\S+) ms.*?([\d.]+) effective TFLOP/s, (?:peak )?device memory ([\d.]+) MiB", line)
    if m:
        name, b, bp, k, loss, ms, tf, mem = m.groups()
        rows.setdefault((b, bp, k), []).append((name.split(" sm_")[0], float(ms), float(tf), float(mem), loss))
print("| (B, B', K) | implementation | ms | TFLOP/s | memory MiB | loss | vs mixneg |")
print("|---|---|---|---|---|---|---|")
for shape, rs in rows.items():
    base = next((r for r in rs if r[0].startswith("mixneg")), None)
    for name, ms, tf, mem, loss in rs:
        ratio = f"{ms / base[1]:.2f}x time, {mem / base[3]:.1f}x memory" if base else ""
        print(f"| {', '.join(shape)} | {name} | {ms:.2f} | {tf:.1f} | {mem:.0f} | {loss} | {ratio} |")
PY
