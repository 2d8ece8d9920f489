#!/usr/bin/env python3
"""Plot loss and recall curves of `mixneg train --metrics M.csv`, or of every
run of `mixneg experiment` (a directory), to a PNG. Needs matplotlib (e.g.
lab/.venv/bin/python, which lab/peers.sh creates).

usage: plot_training.py METRICS.csv|EXPERIMENT_DIR OUT.png
"""

import csv
import glob
import os
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read(path):
    rows = list(csv.DictReader(open(path)))
    return [{k: float(v) for k, v in r.items()} for r in rows]


def main():
    src, out = sys.argv[1], sys.argv[2]
    runs = {}
    if os.path.isdir(src):
        for p in sorted(glob.glob(os.path.join(src, "run-*.csv"))):
            runs[os.path.basename(p)[4:-4]] = read(p)
    else:
        runs[os.path.basename(src)] = read(src)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    if os.path.isdir(src):
        # Average the seeds of each configuration.
        groups = defaultdict(list)
        for name, rows in runs.items():
            groups[name.rsplit("-seed", 1)[0]].append(rows)
        series = {
            g: [{k: sum(r[i][k] for r in rs) / len(rs) for k in rs[0][i]} for i in range(len(rs[0]))]
            for g, rs in groups.items()
        }
    else:
        series = runs
    for name, rows in series.items():
        ep = [r["epoch"] for r in rows]
        axes[0].plot(ep[1:], [r["loss"] for r in rows[1:]], "o-", label=name)
        axes[1].plot(ep, [r["recall100"] for r in rows], "o-", label=name)
        axes[2].plot(ep, [r["lowq10"] for r in rows], "o-", label=name)
    axes[0].set_title("training loss")
    axes[1].set_title("Recall@100 (full corpus)")
    axes[2].set_title("low-quality intrusion@10 (lower is better)")
    for a in axes:
        a.set_xlabel("epoch")
        a.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
