#!/usr/bin/env bash
# Build, here, the x86-64 binaries that scripts/gpu_check.sh runs on a GPU
# machine that has no Rust toolchain: the CLI (gpu-bench) and the prebuilt
# GPU and NVRTC test binaries. Output: gpu_bundle/ (git-ignored; a few MB).
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf gpu_bundle && mkdir -p gpu_bundle
cargo build --release --locked -p mixneg-train --bin mixneg
cp target/release/mixneg gpu_bundle/
for t in cuda_vs_reference cuda_ptx; do
    exe=$(cargo test --release --locked -p mixneg --no-run --test "$t" --message-format=json 2>/dev/null |
        python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["executable"])')
    cp "$exe" "gpu_bundle/$t"
done
strip gpu_bundle/* 2>/dev/null || true
ls -la gpu_bundle
