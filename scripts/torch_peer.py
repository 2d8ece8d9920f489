#!/usr/bin/env python3
"""PyTorch peer of mixneg's fused MNS loss, on the GPU (or CPU with --device cpu).

Same semantics as docs/design.md §2, materializing the B×N logits (eager
F.cross_entropy in fp32, with TF32 matmuls and under bf16 autocast — the
peers of mixneg's precision tiers — and torch.compile in fp32 if it works),
timed with CUDA events, with peak device memory. The data is mixneg's `synthetic::Synthetic` regenerated
bit for bit (SplitMix64 of each index), so `--check` can compare the loss with
what `mixneg gpu-bench` / `mixneg demo` print for the same shape.

usage: torch_peer.py B BPRIME K [--reps R] [--device cuda|cpu] [--no-compile]
"""

import argparse
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benches", "peers"))
from peers import synthetic  # noqa: E402  (mixneg's synthetic data, bit for bit)


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
    if dev == "cuda":
        # The lower tiers' peers: fp32 matmuls on TF32 tensor cores, and bf16
        # autocast (bf16 matmuls with f32 accumulation, softmax in f32).
        def tf32_step():
            torch.backends.cuda.matmul.allow_tf32 = True
            try:
                step(u, v, log_q, ids, tau)
            finally:
                torch.backends.cuda.matmul.allow_tf32 = False

        def bf16_step():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                step(u, v, log_q, ids, tau)

        runs += [("torch eager tf32", tf32_step), ("torch eager bf16-autocast", bf16_step)]
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
