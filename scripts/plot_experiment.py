#!/usr/bin/env python3
"""Plots of `scripts/experiment.sh`: Recall@100 and low-quality intrusion@100
against B'/B (MNS at fixed B and at fixed B + B'), one panel per world, with
corrected batch softmax, the popularity list and the "true items, fitted users" yardstick as
lines; means over seeds with their 95% intervals. Needs matplotlib.

usage: plot_experiment.py EXPERIMENTS_DIR   (writes EXPERIMENTS_DIR/*.png)
"""

import csv
import math
import os
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

T95 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262]
WORLDS = ["paper-sbad0", "paper-sbad0.1", "paper-sbad0.3", "paper-sbad0.5", "ml-100k", "ml-1m"]


def mean_ci(xs):
    n = len(xs)
    m = sum(xs) / n
    if n < 2:
        return m, 0.0
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1))
    return m, T95[min(n - 2, len(T95) - 1)] * sd / math.sqrt(n)


def main():
    root = sys.argv[1]
    worlds = [w for w in WORLDS if os.path.exists(os.path.join(root, w, "results.csv"))]
    if not worlds:
        sys.exit(f"no results.csv under {root}/<world>/")
    for col, title in [("recall100", "Recall@100"), ("lowq100", "low-quality intrusion@100")]:
        fig, axes = plt.subplots(1, len(worlds), figsize=(3.6 * len(worlds), 3.4), squeeze=False)
        for ax, w in zip(axes[0], worlds):
            rows = list(csv.DictReader(open(os.path.join(root, w, "results.csv"))))
            fam = defaultdict(lambda: defaultdict(list))
            ref = []
            for r in rows:
                if r["config"] == "batch softmax, logQ":
                    ref.append(float(r[col]))
                if r["family"].startswith("mns"):
                    fam[r["family"]][float(r["ratio"])].append(float(r[col]))
            for f, style in [("mns-fixed-b", "o-"), ("mns-fixed-total", "s--")]:
                if f not in fam:
                    continue
                xs = sorted(fam[f])
                ms = [mean_ci(fam[f][x]) for x in xs]
                ax.errorbar(xs, [m for m, _ in ms], yerr=[h for _, h in ms], fmt=style, capsize=3, label=f)
            lines = [("batch softmax, logQ", ref, "k")]
            base = os.path.join(root, w, "baselines.csv")
            if os.path.exists(base):
                b = defaultdict(list)
                for r in csv.DictReader(open(base)):
                    b[r["baseline"]].append(float(r[col]))
                lines += [("popularity list", b["popularity list"], "tab:gray")]
                if b.get("true items, fitted users"):
                    lines += [("true items, fitted users", b["true items, fitted users"], "tab:green")]
            for name, xs, c in lines:
                if xs:
                    m, _ = mean_ci(xs)
                    ax.axhline(m, color=c, ls=":", label=name)
            ax.set_xscale("log", base=2)
            ax.set_xlabel("B'/B")
            ax.set_title(w)
        axes[0][0].set_ylabel(title)
        richest = max(axes[0], key=lambda a: len(a.get_legend_handles_labels()[0]))
        richest.legend(fontsize=7)
        fig.tight_layout()
        out = os.path.join(root, f"{col}.png")
        fig.savefig(out, dpi=110)
        print(out)


if __name__ == "__main__":
    main()
