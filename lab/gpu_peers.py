#!/usr/bin/env python3
"""mixneg against the losses a GPU user would otherwise pick, on the same
data, forward + backward to both embeddings, on one CUDA device.

The problem is the one every peer can express: no accidental-hit removal,
logits s_ij = ⟨u_i, v_j⟩/τ − log Q_j, the positive of query i is candidate i,
τ = 0.05, mean over the rows; the data is mixneg-train's `synthetic::Synthetic`
regenerated bit for bit (lab/peers.py), so `mixneg gpu-bench`
times the same call. Rows:

* mixneg (mixneg.torch on CUDA tensors) at each precision tier, with
  validate=False (the kernels alone), and the f32 tier with its device-side
  input check (the default);
* PyTorch eager F.cross_entropy on the materialized logits in fp32, with
  TF32 matmuls, and under bf16 autocast; torch.compile of the fp32 one;
* F.linear_cross_entropy (chunked, `LinearCrossEntropyOptions`) where this
  torch has it (2.13 and newer), log Q as the bias;
* Liger-Kernel's fused linear cross-entropy (fp32 and bf16), log Q as the
  bias;
* Apple's Cut Cross-Entropy (bf16 and fp32), which takes no bias: log Q
  enters as an extra embedding column (e = [u/τ, 1], c = [v, −log Q]), the
  same logits exactly.

Before timing, each row's loss is compared with the float64 loss of the same
data (and with mixneg's f32 tier); a row off by more than its precision
allows (1e-4 relative for f32 rows, 2e-3 for TF32, 3e-2 for bf16) is marked
`loss check FAILED` in its line and in the CSV. Each row is timed as the
median of `--reps` calls between CUDA events after two warm-up calls, with
its peak device memory above the inputs (PyTorch's allocator statistics;
for mixneg plus the crate's own scratch, which that allocator does not see).
A peer that is not installed or fails is reported and skipped.

usage: gpu_peers.py B BPRIME K [--reps R] [--csv FILE] [--dry-run]

--dry-run runs every row on the CPU with wall-clock timing (rows that need a
GPU fail and are reported): the script's own check where there is no GPU.
"""

import argparse
import csv
import os
import sys
import time
import traceback

import torch
import torch.nn.functional as F
from peers import synthetic  # mixneg's synthetic data, bit for bit (lab/peers.py, beside this script)

from mixneg.torch import mns_loss_reference

TAU = 0.05
TOL = {"f32": 1e-4, "tf32": 2e-3, "bf16": 3e-2}


def loss_f64(u, v, log_q):
    return float(mns_loss_reference(u.double(), v.double(), log_q.double(), temperature=TAU))


def rows(u, v, log_q, b):
    """(name, tier, make) where make() returns (inputs to zero, fwd+bwd fn, extra bytes)."""
    target = torch.arange(b, device=u.device)
    out = []

    def leaf(x, dtype=torch.float32):
        return x.detach().to(dtype).clone().requires_grad_()

    def eager(dtype_ctx=None, tf32=False):
        def make():
            uu, vv = leaf(u), leaf(v)

            def fn():
                prev = torch.backends.cuda.matmul.allow_tf32
                torch.backends.cuda.matmul.allow_tf32 = tf32
                try:
                    if dtype_ctx is not None:
                        with torch.autocast(u.device.type, dtype=dtype_ctx):
                            loss = F.cross_entropy(uu @ vv.T / TAU - log_q, target)
                    else:
                        loss = F.cross_entropy(uu @ vv.T / TAU - log_q, target)
                finally:
                    torch.backends.cuda.matmul.allow_tf32 = prev
                loss.backward()
                return loss

            return (uu, vv), fn, 0

        return make

    try:
        import mixneg.torch as mt

        why = mt.cuda_unavailable()
    except Exception as e:  # noqa: BLE001
        mt, why = None, f"{type(e).__name__}: {e}"
    if mt is not None and (why is None or not u.is_cuda):
        from mixneg import _native

        def mixneg_row(tier, validate):
            def make():
                uu, vv = leaf(u), leaf(v)
                extra = 0
                if u.is_cuda:
                    extra = _native.cuda_scratch_bytes(u.device.index, b, v.shape[0], u.shape[1], tier)

                def fn():
                    loss = mt.mns_loss(uu, vv, log_q, temperature=TAU, precision=tier, validate=validate)
                    loss.backward()
                    return loss

                return (uu, vv), fn, extra

            return make

        for tier in ("f32", "tf32", "bf16"):
            out.append((f"mixneg {tier}", tier, mixneg_row(tier, False)))
        out.append(("mixneg f32 (validated)", "f32", mixneg_row("f32", True)))
    else:
        print(f"mixneg: unavailable ({why})")

    out += [
        ("torch eager fp32", "f32", eager()),
        ("torch eager tf32", "tf32", eager(tf32=True)),
        ("torch eager bf16-autocast", "bf16", eager(torch.bfloat16)),
    ]

    if hasattr(F, "linear_cross_entropy") and hasattr(torch.nn, "LinearCrossEntropyOptions"):

        def lce():
            uu, vv = leaf(u), leaf(v)
            opts = torch.nn.LinearCrossEntropyOptions()

            def fn():
                loss = F.linear_cross_entropy(uu / TAU, vv, target, linear_bias=-log_q, options=opts)
                loss.backward()
                return loss

            return (uu, vv), fn, 0

        out.append(("F.linear_cross_entropy chunked", "f32", lce))
    else:
        print(f"F.linear_cross_entropy: not in torch {torch.__version__}")

    def liger(dtype, tier):
        def make():
            try:
                from liger_kernel.transformers.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyLoss
            except ImportError:
                from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
            ce = LigerFusedLinearCrossEntropyLoss()
            uu, vv = leaf(u, dtype), leaf(v, dtype)
            bias = (-log_q).to(dtype)

            def fn():
                loss = ce(vv, uu / TAU, target, bias=bias)
                loss.backward()
                return loss

            return (uu, vv), fn, 0

        return make

    out += [("liger fp32", "f32", liger(torch.float32, "f32")), ("liger bf16", "bf16", liger(torch.bfloat16, "bf16"))]

    def cce(dtype):
        def make():
            from cut_cross_entropy import linear_cross_entropy

            uu, vv = leaf(u, dtype), leaf(v, dtype)
            pad = 8  # the extra column, padded to keep rows 16-byte aligned
            one = torch.zeros(u.shape[0], pad, device=u.device, dtype=dtype)
            one[:, 0] = 1
            lq = torch.zeros(v.shape[0], pad, device=u.device, dtype=dtype)
            lq[:, 0] = -log_q

            def fn():
                e = torch.cat([uu / TAU, one], 1)
                c = torch.cat([vv, lq], 1)
                loss = linear_cross_entropy(e, c, target)
                loss.backward()
                return loss

            return (uu, vv), fn, 0

        return make

    out += [("cce bf16", "bf16", cce(torch.bfloat16)), ("cce fp32", "f32", cce(torch.float32))]

    # Last: its compilation is the slowest warm-up.
    def compiled():
        f = torch.compile(lambda uu, vv: F.cross_entropy(uu @ vv.T / TAU - log_q, target))
        uu, vv = leaf(u), leaf(v)

        def fn():
            loss = f(uu, vv)
            loss.backward()
            return loss

        return (uu, vv), fn, 0

    out.append(("torch.compile fp32", "f32", compiled))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("b", type=int)
    ap.add_argument("bp", type=int)
    ap.add_argument("k", type=int)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--csv", default=None)
    ap.add_argument("--dry-run", action="store_true")
    a = ap.parse_args()
    if a.dry_run:
        dev = torch.device("cpu")
    elif not torch.cuda.is_available():
        print("gpu_peers: no CUDA device")
        return 4
    else:
        dev = torch.device("cuda", torch.cuda.current_device())
    gpu = dev.type == "cuda"
    u, v, log_q, _ = synthetic(a.b, a.bp, a.k)
    u, v, log_q = (torch.tensor(x, device=dev) for x in (u, v, log_q))
    n = a.b + a.bp
    flops = 6.0 * a.b * n * a.k
    truth = loss_f64(u, v, log_q)
    print(f"shape B = {a.b}, B' = {a.bp}, K = {a.k}: float64 loss {truth:.7f}; torch {torch.__version__}")
    mixneg_f32 = None
    header = ["b", "bp", "k", "implementation", "tier", "loss", "rel_error", "loss_check", "ms", "peak_mib"]
    if a.csv and not os.path.exists(a.csv):
        with open(a.csv, "w", newline="") as f:
            csv.writer(f).writerow(header)
    for name, tier, make in rows(u, v, log_q, a.b):
        try:
            if gpu:
                torch.cuda.synchronize()
                torch.cuda.empty_cache()
                base = torch.cuda.memory_allocated()
                torch.cuda.reset_peak_memory_stats()
            leaves, fn, extra = make()
            loss = float(fn().detach())  # first call: compile / autotune
            for x in leaves:
                x.grad = None
            fn()
            peak = float("nan")
            if gpu:
                torch.cuda.synchronize()
                peak = torch.cuda.max_memory_allocated() - base + extra
            ms = []
            for _ in range(a.reps):
                for x in leaves:
                    x.grad = None
                if gpu:
                    t0, t1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    t0.record()
                    fn()
                    t1.record()
                    t1.synchronize()
                    ms.append(t0.elapsed_time(t1))
                else:
                    t = time.perf_counter()
                    fn()
                    ms.append(1e3 * (time.perf_counter() - t))
            ms.sort()
            med = ms[len(ms) // 2]
        except Exception as e:  # noqa: BLE001
            first = f"{type(e).__name__}: {e}".splitlines()[0][:300]
            print(f"{name}: failed: {first}")
            traceback.print_exc(limit=3, file=sys.stdout)
            continue
        if name == "mixneg f32":
            mixneg_f32 = loss
        rel = abs(loss - truth) / abs(truth)
        ok = rel <= TOL[tier]
        vs = "" if mixneg_f32 is None else f", vs mixneg f32 {abs(loss - mixneg_f32) / abs(mixneg_f32):.1e}"
        check = "ok" if ok else "FAILED"
        print(
            f"{name}: B = {a.b}, B' = {a.bp}, K = {a.k}: loss {loss:.7f} (rel. error {rel:.1e}{vs}, "
            f"loss check {check}), median {med:.3f} ms, {flops / med / 1e9:.1f} effective TFLOP/s, "
            f"peak device memory {peak / 2**20:.1f} MiB"
        )
        # Appended row by row: a run stopped by its time box keeps what it measured.
        if a.csv:
            with open(a.csv, "a", newline="") as f:
                csv.writer(f).writerow(
                    [
                        a.b,
                        a.bp,
                        a.k,
                        name,
                        tier,
                        f"{loss:.7f}",
                        f"{rel:.2e}",
                        check,
                        f"{med:.4f}",
                        f"{peak / 2**20:.1f}",
                    ]
                )
        del leaves, fn
    return 0


if __name__ == "__main__":
    sys.exit(main())
