#!/usr/bin/env bash
# Build, here, everything scripts/gpu_check.sh needs on a GPU machine that has
# no Rust toolchain and no network, into gpu_bundle/ (git-ignored; the device
# call carries it):
#   mixneg              the CLI (demo, gpu-bench), stripped
#   cuda_vs_reference   the GPU test binary (run once per kernel path)
#   wheels/             mixneg's wheel (abi3, any CPython >= 3.9) and the
#                       pure-Python peers: Liger-Kernel and Cut Cross-Entropy
# and checks that the bundle and the rest of the working tree fit the device
# call's 64 MiB. Needs python/.venv (scripts/test makes it) for the wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
LIGER=liger-kernel==0.8.5
CCE=cut-cross-entropy==25.1.1
rm -rf gpu_bundle && mkdir -p gpu_bundle/wheels
cargo build --release --locked -p mixneg-train --bin mixneg
cp target/release/mixneg gpu_bundle/
exe=$(cargo test --release --locked -p mixneg --no-run --test cuda_vs_reference --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["executable"])')
cp "$exe" gpu_bundle/cuda_vs_reference
strip gpu_bundle/mixneg gpu_bundle/cuda_vs_reference
VENV=python/.venv
[ -x "$VENV/bin/pip" ] || { echo "python/.venv is missing: run scripts/test once first" >&2; exit 1; }
"$VENV/bin/pip" wheel --quiet --disable-pip-version-check --no-deps ./python -w gpu_bundle/wheels
"$VENV/bin/pip" download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
    -d gpu_bundle/wheels "$LIGER" "$CCE"
ls -la gpu_bundle gpu_bundle/wheels
# What the device call sends: the tracked and untracked-not-ignored files,
# plus the carried bundle.
tree_kib=$(git ls-files -co --exclude-standard -z | du -ck --files0-from=- | tail -n 1 | cut -f1)
bundle_kib=$(du -sk gpu_bundle | cut -f1)
total=$((tree_kib + bundle_kib))
echo "working tree ${tree_kib} KiB + gpu_bundle ${bundle_kib} KiB = ${total} KiB (limit 65536 KiB)"
[ "$total" -le 65536 ] || { echo "over the device call's 64 MiB" >&2; exit 1; }
