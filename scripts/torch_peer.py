#!/usr/bin/env python3
"""PyTorch peer of mixneg's fused MNS loss, on the GPU (or CPU with --device cpu).

Same semantics as DESIGN.md §2, materializing the B×N logits (eager
F.cross_entropy, and torch.compile if it works), timed with CUDA events, with
peak device memory. The data is mixneg's `synthetic::Synthetic` regenerated
bit for bit (SplitMix64 of each index), so `--check` can compare the loss with
what `mixneg gpu-bench` / `mixneg demo` print for the same shape.

usage: torch_peer.py B BPRIME K [--reps R] [--device cuda|cpu] [--no-compile]
"""
import argparse
import math
import sys

import numpy as np
import torch
import torch.nn.functional as F


def splitmix(x):
    z = x + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def unit(idx):
    h = splitmix(idx)
    return ((h >> np.uint64(40)).astype(np.float32) / np.float32(1 << 24)) - np.float32(0.5)


def synthetic(b, bp, k, seed=1):
    """mixneg::synthetic::Synthetic::new(b, bp, k, seed), bit for bit."""
    n = b + bp
    scale = np.float32(3.46) / np.float32(math.sqrt(k))
    base = np.uint64(seed << 32)
    with np.errstate(over="ignore"):
        u = scale * unit(base + np.arange(b * k, dtype=np.uint64))
        v = scale * unit(base + np.uint64(1 << 28) + np.arange(n * k, dtype=np.uint64))
    v[: b * k] = np.float32(0.6) * u + np.float32(0.8) * v[: b * k]
    j = np.arange(n, dtype=np.int64)
    log_q = -np.log(((j * 7919) % 5000 + 1).astype(np.float32)) - np.float32(2.0)
    ids = (j * 7919) % (4 * n)
    return u.reshape(b, k), v.reshape(n, k), log_q.astype(np.float32), ids


def mns_loss(u, v, log_q, ids, tau):
    """L = mean_i(lse_i - s_ii) with logQ correction and accidental hits removed."""
    b = u.shape[0]
    s = (u @ v.T) / tau - log_q[None, :]
    hit = ids[:b, None] == ids[None, :]
    hit[torch.arange(b), torch.arange(b)] = False
    s = s.masked_fill(hit, float("-inf"))
    return F.cross_entropy(s, torch.arange(b, device=u.device))


def step(u, v, log_q, ids, tau):
    u.grad = None
    v.grad = None
    loss = mns_loss(u, v, log_q, ids, tau)
    loss.backward()
    return loss


def time_it(fn, reps, device):
    fn()  # warm-up (and compilation)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    ms = []
    for _ in range(reps):
        if device == "cuda":
            t0, t1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            t0.record()
            fn()
            t1.record()
            t1.synchronize()
            ms.append(t0.elapsed_time(t1))
        else:
            import time
            t = time.perf_counter()
            fn()
            ms.append(1e3 * (time.perf_counter() - t))
    ms.sort()
    peak = (torch.cuda.max_memory_allocated() - base) if device == "cuda" else float("nan")
    return ms[len(ms) // 2], peak


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("b", type=int)
    ap.add_argument("bp", type=int)
    ap.add_argument("k", type=int)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--no-compile", action="store_true")
    a = ap.parse_args()
    dev = a.device
    u, v, log_q, ids = synthetic(a.b, a.bp, a.k)
    u = torch.tensor(u, device=dev, requires_grad=True)
    v = torch.tensor(v, device=dev, requires_grad=True)
    log_q = torch.tensor(log_q, device=dev)
    ids = torch.tensor(ids, device=dev)
    tau = 0.05
    flops = 6.0 * a.b * (a.b + a.bp) * a.k
    runs = [("torch eager", lambda: step(u, v, log_q, ids, tau))]
    if not a.no_compile:
        try:
            compiled = torch.compile(mns_loss)

            def cstep():
                u.grad = None
                v.grad = None
                compiled(u, v, log_q, ids, tau).backward()

            runs.append(("torch.compile", cstep))
        except Exception as e:  # noqa: BLE001
            print(f"torch.compile unavailable: {e}", file=sys.stderr)
    loss = step(u, v, log_q, ids, tau).item()
    for name, fn in runs:
        try:
            med, peak = time_it(fn, a.reps, dev)
        except Exception as e:  # noqa: BLE001
            print(f"{name}: failed: {type(e).__name__}: {e}".splitlines()[0])
            continue
        print(
            f"{name}: B = {a.b}, B' = {a.bp}, K = {a.k}: loss {loss:.6f}, median {med:.3f} ms, "
            f"{flops / med / 1e9:.2f} effective TFLOP/s, peak device memory {peak / 2**20:.1f} MiB"
        )


if __name__ == "__main__":
    main()
