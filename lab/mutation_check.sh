#!/usr/bin/env bash
# Proves the tolerance policy of tests/common/mod.rs bites: each patch in
# lab/mutants/ degrades one kernel on purpose; the accuracy tests must
# fail with it applied. Prints one line per mutant and exits non-zero if a
# mutant that must be caught survives. Restores the tree after each.
#   lab/mutation_check.sh            # all mutants (~5 min on 2 cores)
# Needs g++ for the CUDA-emulator mutant (else that one is reported skipped).
set -uo pipefail
cd "$(dirname "$0")/.."
if ! git diff --quiet -- src kernels tests/cuda_emu; then
    echo "src/, kernels/ or tests/cuda_emu/ has uncommitted changes; commit or stash them first" >&2
    exit 2
fi
status=0
for patch in lab/mutants/*.patch; do
    name=$(basename "$patch" .patch)
    case "$name" in
        cuda_*) tests=(--test cuda_emulated) ;;
        *) tests=(--test cpu_vs_reference --test vectors --test properties --test hardening) ;;
    esac
    # Mutants a plain f32 implementation shares are not expected to fail (see below).
    expect=caught
    [ "$name" = cpu_unblocked_sums ] && expect=survives
    git apply "$patch" || { echo "$name: patch does not apply" >&2; status=1; continue; }
    log=$(mktemp)
    cargo test --release --locked -p mixneg "${tests[@]}" >"$log" 2>&1
    rc=$?
    git checkout -q -- src kernels tests/cuda_emu
    if grep -q "^skipping: no C++ compiler" "$log"; then
        echo "$name: skipped (no g++)"
    elif [ $rc -ne 0 ]; then
        first=$(grep -m1 -E "error .* > bound|loss .* > " "$log" | cut -c1-220)
        echo "$name: CAUGHT ($first)"
        [ "$expect" = caught ] || status=1
    else
        echo "$name: survived (expected: $expect)"
        [ "$expect" = survives ] || status=1
    fi
    rm -f "$log"
done
exit $status
