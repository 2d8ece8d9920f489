#!/usr/bin/env python3
"""The GPU check's first phase: mixneg's tensor-core and cp.async building
blocks alone on real hardware, through CuPy (no Rust binary involved), so
that a wrong fragment layout is told apart from a thin accuracy margin.

kernels/mns.cu (with the files it includes) + tests/cuda_emu/mma_test.cu are compiled by CuPy's NVRTC for the
device; one block of 8 warps computes D = A·B per warp (A 16×K, B K×8, values
sign·[1, 2)·2^(−3…2), as tests/cuda_emu/mma.cpp draws them) with 3xTF32, one
TF32 pass and bf16 factors, and a two-stage cp.async pipeline copies 5 chunks.
Errors are in units of 2⁻²²·Σ_k|a_ik b_kj| (bf16: against the exact product
of the rounded factors). Per K it prints the measured units beside the bounds
the emulator's model of a tensor core's addition derives (3 + 51K/128 for
3xTF32, 25K/256 for bf16; one TF32 pass is only expected to be ≤ 2¹¹ +
17K/128; tests/cuda_emulated.rs derives them) and a verdict:

* LAYOUT WRONG: an error ≥ 2¹⁶ units (a misplaced element errs by ~2²² units);
* MARGIN: within the layout threshold but above the emulator's bound — the
  hardware's alignment/truncation costs more than the model says;
* ok.

Exit code 0 when every verdict is ok, 1 with a MARGIN only, 2 with a LAYOUT
WRONG or a wrong cp.async output, 4 without CuPy or a GPU.

usage: gpu_blocks.py            # on the GPU
       gpu_blocks.py --self-test  # the analysis on NumPy-made results (no GPU)
"""

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
WARPS = 8
LAYOUT_UNITS = 2.0**16


def draw(k: int, seed: int):
    """A (8·16×K) and B (8·K×8) float32, sign·[1, 2)·2^(−3…2)."""
    rng = np.random.default_rng(seed)

    def vals(n):
        m = 1.0 + rng.random(n)
        e = rng.integers(-3, 3, n)
        s = np.where(rng.random(n) < 0.5, -1.0, 1.0)
        return (s * np.ldexp(m, e)).astype(np.float32)

    return vals(WARPS * 16 * k), vals(WARPS * k * 8)


def bf16(x: np.ndarray) -> np.ndarray:
    """float32 rounded to bf16 (to nearest even), as cvt.rn.bf16x2.f32."""
    u = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16
    return r.astype(np.uint32).view(np.float32)


def units(d: np.ndarray, a: np.ndarray, b: np.ndarray, k: int) -> float:
    """max |d − A·B| / (2⁻²² Σ|a b|) over every output of every warp."""
    a = a.astype(np.float64).reshape(WARPS, 16, k)
    b = b.astype(np.float64).reshape(WARPS, k, 8)
    exact = a @ b
    scale = np.abs(a) @ np.abs(b)
    return float(np.max(np.abs(d.astype(np.float64).reshape(WARPS, 16, 8) - exact) / (scale * 2.0**-22)))


def verdicts(k: int, r3: float, r1: float, rb, wrong: int):
    """[(name, units, bound, verdict)] for one K."""
    rows = [
        ("3xTF32", r3, 3 + 51 * k / 128),
        ("TF32", r1, 2.0**11 + 17 * k / 128),
    ]
    if rb is not None:
        rows.append(("bf16", rb, 25 * k / 256))
    out = []
    for name, got, bound in rows:
        v = "LAYOUT WRONG" if not got < LAYOUT_UNITS else ("MARGIN" if got > bound else "ok")
        out.append((name, got, bound, v))
    out.append(("cp.async", float(wrong), 0.0, "ok" if wrong == 0 else "LAYOUT WRONG"))
    return out


def report(all_rows) -> int:
    print("| K | block | error (units of 2^-22 sum|ab|) | emulator's bound | verdict |")
    print("|---|---|---|---|---|")
    code = 0
    for k, rows in all_rows:
        for name, got, bound, v in rows:
            shown = f"{got:.0f} wrong" if name == "cp.async" else f"{got:.3f}"
            print(f"| {k} | {name} | {shown} | {bound:g} | {v} |")
            code = max(code, {"ok": 0, "MARGIN": 1, "LAYOUT WRONG": 2}[v])
    return code


def self_test() -> int:
    """The analysis on results made here: an f32 accumulation passes, a
    swapped fragment (A's rows g and g + 8 exchanged) is a LAYOUT WRONG, a
    small extra error is a MARGIN."""
    k = 64
    a, b = draw(k, 3)
    a3, b3 = a.reshape(WARPS, 16, k), b.reshape(WARPS, k, 8)
    d = np.einsum("wik,wkj->wij", a3, b3).astype(np.float32)  # f32-rounded exact
    ab, bb = bf16(a).reshape(WARPS, 16, k), bf16(b).reshape(WARPS, k, 8)
    dbf = np.einsum("wik,wkj->wij", ab, bb).astype(np.float32)
    rows = verdicts(k, units(d, a, b, k), units(d, a, b, k), units(dbf, bf16(a), bf16(b), k), 0)
    assert all(v == "ok" for *_, v in rows), rows
    swapped = np.concatenate([a3[:, 8:], a3[:, :8]], axis=1)
    ds = np.einsum("wik,wkj->wij", swapped, b3).astype(np.float32)
    assert verdicts(k, units(ds, a, b, k), 0, None, 0)[0][3] == "LAYOUT WRONG"
    scale = np.abs(a3.astype(np.float64)) @ np.abs(b3.astype(np.float64))
    dm = (d + 100 * 2.0**-22 * scale).astype(np.float32)
    assert verdicts(k, units(dm, a, b, k), 0, None, 0)[0][3] == "MARGIN"
    assert verdicts(k, 0, 0, None, 3)[-1][3] == "LAYOUT WRONG"
    print("gpu_blocks self-test: ok")
    return 0


def on_gpu() -> int:
    try:
        import cupy as cp
    except ImportError as e:
        print(f"gpu_blocks: no CuPy ({e})")
        return 4
    try:
        dev = cp.cuda.Device()
        cc = dev.compute_capability
    except Exception as e:  # noqa: BLE001
        print(f"gpu_blocks: no GPU ({e})")
        return 4
    src = (ROOT / "kernels/mns.cu").read_text() + "\n" + (ROOT / "tests/cuda_emu/mma_test.cu").read_text()
    mod = cp.RawModule(code=src, options=("--std=c++17", f"-I{ROOT / 'kernels'}"), backend="nvrtc")
    mma = mod.get_function("mns_test_mma")
    mma_bf16 = mod.get_function("mns_test_mma_bf16")
    cp_async = mod.get_function("mns_test_cp_async")
    print(f"gpu_blocks: sm_{cc}, CuPy {cp.__version__}")
    all_rows = []
    for k, seed in [(8, 1), (16, 5), (64, 3), (128, 4), (136, 6)]:
        a, b = draw(k, seed)
        da, db = cp.asarray(a), cp.asarray(b)
        d3 = cp.zeros(WARPS * 128, cp.float32)
        d1 = cp.zeros(WARPS * 128, cp.float32)
        mma((1,), (256,), (da, db, d3, d1, np.int64(k)))
        rb = None
        if k % 16 == 0:
            dbf = cp.zeros(WARPS * 128, cp.float32)
            mma_bf16((1,), (256,), (da, db, dbf, np.int64(k)))
            rb = units(cp.asnumpy(dbf), bf16(a), bf16(b), k)
        chunks = 5
        x = cp.asarray(draw(160, seed)[0][: chunks * 1024])
        y = cp.zeros(chunks * 1024, cp.float32)
        cp_async((1,), (256,), (x, y, np.int64(chunks)))
        xh, yh = cp.asnumpy(x).reshape(chunks, 1024), cp.asnumpy(y).reshape(chunks, 1024)
        want = 2.0 * np.roll(xh, -37, axis=1) + 1.0
        wrong = int(np.sum(yh != want.astype(np.float32)))
        all_rows.append((k, verdicts(k, units(cp.asnumpy(d3), a, b, k), units(cp.asnumpy(d1), a, b, k), rb, wrong)))
    return report(all_rows)


if __name__ == "__main__":
    sys.exit(self_test() if sys.argv[1:] == ["--self-test"] else on_gpu())
