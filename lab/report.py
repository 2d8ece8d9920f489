#!/usr/bin/env python3
"""Tables and the plot of BENCHMARKS.md from the committed benchmarks' outputs:
criterion's estimates (target/criterion/*/*/new/estimates.json, written by
`cargo bench --bench mns`) and lab/peers_results.csv (written by
lab/peers.sh). Run with the peers' virtual environment (matplotlib):

    lab/.venv/bin/python lab/report.py
"""

import csv
import json
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CRIT = os.path.join(ROOT, "target", "criterion")


def criterion():
    """{(backend, shape): median seconds}"""
    out = {}
    for group in sorted(os.listdir(CRIT)) if os.path.isdir(CRIT) else []:
        m = re.match(r"(.+)_(mns|3mm)_(\d+)x(\d+)x(\d+)$", group)
        if not m:
            continue
        for fn in os.listdir(os.path.join(CRIT, group)):
            est = os.path.join(CRIT, group, fn, "new", "estimates.json")
            if os.path.exists(est):
                med = json.load(open(est))["median"]["point_estimate"] * 1e-9
                out[(m.group(1), tuple(int(x) for x in m.group(3, 4, 5)))] = med
    return out


def main():
    crit = criterion()
    shapes = sorted({s for (_, s) in crit}, key=lambda s: (s[0] * s[1] * s[2], s))
    backends = ["reference", "portable", "avx2_fma", "avx512", "cuda", "gemm"]
    present = [b for b in backends if any((b, s) in crit for s in shapes)]
    fused = [b for b in ("avx2_fma", "avx512") if b in present]
    print("| (B, N, K) | " + " | ".join(present) + "".join(f" | {b} / ceiling" for b in fused) + " |")
    print("|---" * (len(present) + len(fused) + 1) + "|")
    for s in shapes:
        flops = 6 * s[0] * s[1] * s[2]
        cells = []
        for b in present:
            t = crit.get((b, s))
            cells.append(f"{t * 1e3:.2f} ms ({flops / t / 1e9:.1f})" if t else "—")
        for b in fused:
            ok = (b, s) in crit and ("gemm", s) in crit
            cells.append(f"{crit[('gemm', s)] / crit[(b, s)]:.0%}" if ok else "—")
        print(f"| {s[0]}, {s[1]}, {s[2]} | " + " | ".join(cells) + " |")

    # lab/peers_results.csv has one row per round; plot the median over
    # rounds of each (shape, implementation) and the largest peak RSS.
    peers = []
    path = os.path.join(ROOT, "lab", "peers_results.csv")
    if os.path.exists(path):
        from statistics import median

        groups = {}
        for r in csv.DictReader(open(path)):
            groups.setdefault((r["b"], r["b_prime"], r["k"], r["impl"]), []).append(r)
        for (b, bp, k, impl), rs in groups.items():
            peers.append(
                {
                    "b": b,
                    "b_prime": bp,
                    "k": k,
                    "impl": impl,
                    "gflops": median(float(r["gflops"]) for r in rs),
                    "peak_rss_mib": max(float(r["peak_rss_mib"]) for r in rs),
                }
            )
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.exit("matplotlib missing: run with lab/.venv/bin/python")
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(13, 6))
    labels = [f"{s[0]}×{s[1]}×{s[2]}" for s in shapes]
    xs = range(len(shapes))
    for b, style in [
        ("gemm", "k--"),
        ("avx512", "o-"),
        ("avx2_fma", "d-"),
        ("portable", "s-"),
        ("cuda", "^-"),
        ("reference", "x:"),
    ]:
        pts = [(i, 6 * s[0] * s[1] * s[2] / crit[(b, s)] / 1e9) for i, s in enumerate(shapes) if (b, s) in crit]
        if pts:
            name = "gemm crate: U·Vᵀ + S·V + Sᵀ·U (ceiling)" if b == "gemm" else f"mixneg {b}"
            a1.plot([p[0] for p in pts], [p[1] for p in pts], style, label=name)
    for impl, mk in [
        ("mixneg", "o"),
        ("numpy", "D"),
        ("jax", "v"),
        ("torch", "P"),
        ("torch.compile", "*"),
        ("numpy.products", "1"),
        ("jax.products", "2"),
    ]:
        pts = []
        for r in peers:
            s = (int(r["b"]), int(r["b"]) + int(r["b_prime"]), int(r["k"]))
            if r["impl"] == impl and s in shapes:
                pts.append((shapes.index(s), float(r["gflops"])))
        if pts:
            label = (
                "mixneg (best kernel), peers' run"
                if impl == "mixneg"
                else f"{impl[:-9]}: the three products alone (its BLAS floor)"
                if impl.endswith(".products")
                else f"{impl} (peers' run)"
            )
            a1.plot(
                [p[0] for p in pts],
                [p[1] for p in pts],
                mk,
                markersize=9,
                label=label,
                fillstyle="none" if impl == "mixneg" else "full",
            )
    a1.set_xticks(list(xs))
    a1.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
    a1.set_ylabel("effective GFLOP/s (6·B·N·K / time)")
    a1.set_title(
        "forward + backward, 2 threads (lines: one criterion run;\nmarkers: one peers run, median of its rounds)",
        fontsize=10,
    )
    a1.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=3)
    a1.grid(alpha=0.3)
    for impl, mk in [("mixneg", "o-"), ("numpy", "D-"), ("jax", "v-"), ("torch", "P-"), ("torch.compile", "*-")]:
        pts = sorted(
            (int(r["b"]), float(r["peak_rss_mib"]))
            for r in peers
            if r["impl"] == impl and r["b"] == r["b_prime"] and r["k"] == "64"
        )
        if pts:
            a2.plot([p[0] for p in pts], [p[1] for p in pts], mk, label=impl)
    a2.set_xscale("log", base=2)
    a2.set_yscale("log")
    a2.set_xlabel("B = B′")
    a2.set_ylabel("peak RSS of the whole process, MiB")
    a2.set_title("memory, K = 64")
    a2.legend(fontsize=8)
    a2.grid(alpha=0.3, which="both")
    fig.tight_layout()
    out = os.path.join(ROOT, "benches", "mixneg_bench.png")
    fig.savefig(out, dpi=110)
    print(f"\nplot: {os.path.relpath(out, ROOT)}")


if __name__ == "__main__":
    main()
