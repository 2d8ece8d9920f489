#!/usr/bin/env python3
"""The MNS loss of docs/design.md §2 in NumPy, JAX and PyTorch, materializing the
B×N logits as those libraries do, on mixneg's synthetic data (regenerated bit
for bit, see train/src/synthetic.rs): τ = 0.05, logQ correction on every column,
accidental hits removed, forward + backward (dL/dU, dL/dV).

usage: peers.py IMPL B BPRIME K [--reps R]
IMPL: numpy | jax | torch | torch.compile | torch.lce | torch.lce-ref (PyTorch's
F.linear_cross_entropy, chunked or its reference path: log Q as the bias, no
accidental-hit removal, the problem of `mixneg demo --no-ids`), or a library's GEMM floor:
numpy.products | jax.products — only the three products of the loss's
shapes (S = U·Vᵀ, S·V, Sᵀ·U: the same 6·B·N·K flops, no softmax), i.e. the
least time that library's BLAS needs for the flops any implementation of the
loss must do. They print "loss nan" (there is no loss) and are not peers.
Prints one line: "IMPL: B = .., B' = .., K = ..: loss L, median M ms over R runs".
Threads: set OMP_NUM_THREADS / XLA_FLAGS / torch threads before calling.
"""

import argparse
import math
import os
import sys
import time

import numpy as np

TAU = np.float32(0.05)


def splitmix(x):
    z = x + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def unit(idx):
    h = splitmix(idx)
    return ((h >> np.uint64(40)).astype(np.float32) / np.float32(1 << 24)) - np.float32(0.5)


def synthetic(b, bp, k, seed=1):
    """mixneg_train::synthetic::Synthetic::new(b, bp, k, seed), bit for bit."""
    n = b + bp
    scale = np.float32(3.46) / np.float32(math.sqrt(k))
    base = np.uint64(seed << 32)
    with np.errstate(over="ignore"):
        u = scale * unit(base + np.arange(b * k, dtype=np.uint64))
        v = scale * unit(base + np.uint64(1 << 28) + np.arange(n * k, dtype=np.uint64))
    v[: b * k] = np.float32(0.6) * u + np.float32(0.8) * v[: b * k]
    j = np.arange(n, dtype=np.int64)
    log_q = (-np.log(((j * 7919) % 5000 + 1).astype(np.float32)) - np.float32(2.0)).astype(np.float32)
    ids = (j * 7919) % (4 * n)
    return u.reshape(b, k), v.reshape(n, k), log_q, ids


def removed(ids, b):
    hit = ids[:b, None] == ids[None, :]
    hit[np.arange(b), np.arange(b)] = False
    return hit


def numpy_step(u, v, log_q, hit):
    b = u.shape[0]
    s = (u @ v.T) / TAU - log_q[None, :]
    s[hit] = -np.inf
    m = s.max(axis=1, keepdims=True)
    p = np.exp(s - m)
    z = p.sum(axis=1, keepdims=True)
    lse = m[:, 0] + np.log(z[:, 0])
    loss = float(np.mean(lse - s[np.arange(b), np.arange(b)]))
    g = p / z
    g[np.arange(b), np.arange(b)] -= 1.0
    g *= np.float32(1.0 / (b * TAU))
    return loss, g @ v, g.T @ u


def run(impl, b, bp, k, reps):
    u, v, log_q, ids = synthetic(b, bp, k)
    hit = removed(ids, b)
    if impl == "numpy":
        step = lambda: numpy_step(u, v, log_q, hit)  # noqa: E731
        loss_of = lambda r: r[0]  # noqa: E731
    elif impl == "numpy.products":

        def step():
            s = u @ v.T
            return s @ v, s.T @ u

        loss_of = lambda r: float("nan")  # noqa: E731
    elif impl == "jax.products":
        import jax
        import jax.numpy as jnp

        @jax.jit
        def products(u, v):
            s = u @ v.T
            return s @ v, s.T @ u

        args = [jnp.asarray(x) for x in (u, v)]

        def step():
            out = products(*args)
            jax.block_until_ready(out)
            return out

        loss_of = lambda r: float("nan")  # noqa: E731
    elif impl == "jax":
        import jax
        import jax.numpy as jnp

        def loss_fn(u, v, log_q, hit):
            s = (u @ v.T) / TAU - log_q[None, :]
            s = jnp.where(hit, -jnp.inf, s)
            lse = jax.nn.logsumexp(s, axis=1)
            return jnp.mean(lse - jnp.diagonal(s))

        f = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1)))
        args = [jnp.asarray(x) for x in (u, v, log_q, hit)]

        def step():
            out = f(*args)
            jax.block_until_ready(out)
            return out

        loss_of = lambda r: float(r[0])  # noqa: E731
    elif impl.startswith("torch"):
        import torch
        import torch.nn.functional as F

        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
        tu = torch.tensor(u, requires_grad=True)
        tv = torch.tensor(v, requires_grad=True)
        tq, th = torch.tensor(log_q), torch.tensor(hit)
        tgt = torch.arange(b)

        if impl in ("torch", "torch.compile"):

            def loss_fn(tu, tv):
                s = (tu @ tv.T) / float(TAU) - tq[None, :]
                return F.cross_entropy(s.masked_fill(th, float("-inf")), tgt)

            fn = torch.compile(loss_fn) if impl == "torch.compile" else loss_fn
        elif impl in ("torch.lce", "torch.lce-ref"):
            # PyTorch's fused loss: chunked (no B×N logits) or its reference
            # path; log Q as the bias; it cannot remove accidental hits.
            opts = torch.nn.LinearCrossEntropyOptions() if impl == "torch.lce" else None

            def fn(tu, tv):
                return F.linear_cross_entropy(tu / float(TAU), tv, tgt, linear_bias=-tq, options=opts)

        else:
            sys.exit(f"unknown implementation {impl}")

        def step():
            tu.grad = None
            tv.grad = None
            loss = fn(tu, tv)
            loss.backward()
            return loss

        loss_of = lambda r: float(r.item())  # noqa: E731
    else:
        sys.exit(f"unknown implementation {impl}")
    r = step()  # warm-up (and compilation)
    ms = []
    for _ in range(reps):
        t = time.perf_counter()
        r = step()
        ms.append(1e3 * (time.perf_counter() - t))
    ms.sort()
    print(
        f"{impl}: B = {b}, B' = {bp}, K = {k}: loss {loss_of(r):.6f}, median {ms[len(ms) // 2]:.2f} ms over {reps} runs"
    )


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("impl")
    ap.add_argument("b", type=int)
    ap.add_argument("bp", type=int)
    ap.add_argument("k", type=int)
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args()
    run(a.impl, a.b, a.bp, a.k, a.reps)
