"""The user's benchmark: mixneg against PyTorch's own loss, called from PyTorch.

    python/.venv/bin/python lab/torch_step.py                      # 3 shapes, 3 rounds
    python/.venv/bin/python lab/torch_step.py --shapes 4096,4096,64 --rounds 5
    python/.venv/bin/python lab/torch_step.py --configs loss:mixneg/no-ids,loss:lce/no-ids

(scripts/test makes python/.venv with torch and mixneg installed.) In one run,
in interleaved rounds (the order of the configurations rotates each round),
with 2 threads everywhere (torch.set_num_threads, RAYON_NUM_THREADS), at each
(B, B′, K):

(a) the loss alone, forward + backward (dU, dV), N = B + B′ candidates,
    τ = 0.05, item ids with duplicates (accidental hits removed):
    * ``mixneg``        mixneg.torch.mns_loss(...).backward()
    * ``torch``         F.cross_entropy(U·Vᵀ/τ − log Q with hits masked to −inf), eager
    * ``torch.compile`` the same function under torch.compile (compile time excluded)
    and, without ids (the problem PyTorch's fused loss can express: log Q as
    the bias, no hit removal), PyTorch's chunked loss, the bf16 tier, and the
    binding against the Rust call:
    * ``mixneg/no-ids`` mixneg.torch.mns_loss(...).backward() with ids=None
    * ``mixneg-bf16/no-ids`` the same with precision="bf16" (f32 tensors; a CPU
                        with AVX512_BF16)
    * ``lce/no-ids``    F.linear_cross_entropy(U/τ, V, target, linear_bias=−log Q,
                        options=LinearCrossEntropyOptions()): chunked, no B×N logits
    * ``lce-ref/no-ids`` the same with options=None (its reference path)
    * ``native/no-ids`` mixneg.mns_loss on the NumPy views (the extension module alone)
    * ``rust/no-ids``   the Rust call itself (`cargo run --release --example timeit`,
                        caller-owned buffers, no ids): the binding's overhead is
                        mixneg/no-ids ÷ rust/no-ids
(b) one whole training step of a small two-tower model (EmbeddingBag(50 000, 64)
    + MLP 64→128→K per tower, B user bags of 8 ids, N item bags of 4 ids, Adam)
    with each loss: ``mixneg``, ``torch``, ``torch.compile`` (the loss compiled),
    and without hit removal ``mixneg/no-ids``, ``mixneg-bf16/no-ids``, ``lce/no-ids``.

Every configuration runs in its own process (so that its peak RSS is its
own); each reports the median of --reps timed calls after two warm-ups and its
peak RSS (ru_maxrss, which includes torch's import: the "base" column is the
RSS just before the first call). The table gives the median over rounds and
the median of the per-round ratios to mixneg (the ``/no-ids`` rows: to
mixneg/no-ids). Every loss's value is checked against mixneg's of its group
(1e-4 relative; the bf16 tier 3e-2).
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import os
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
THREADS = 2
TAU = 0.05


def _data(b, bp, k, seed=0):
    import torch

    g = torch.Generator().manual_seed(seed)
    n = b + bp
    q = torch.randn(b, k, generator=g) / k**0.5
    c = torch.randn(n, k, generator=g) / k**0.5
    # Zipf-like item ids over a 200 000-item corpus: the positives repeat.
    ranks = torch.arange(1, 200_001, dtype=torch.float64)
    p = 1 / ranks**1.05
    p /= p.sum()
    ids = torch.multinomial(p, n, replacement=True, generator=g)
    log_q = torch.log(p[ids] * 0.5 + 0.5 / 200_000).float()
    return q, c, log_q, ids


def torch_loss(q, c, log_q, ids, tau: float, b: int):
    """Eager PyTorch as a user writes it: the B×N logits materialized (the
    package's plain reference loss)."""
    from mixneg.torch import mns_loss_reference

    assert q.shape[0] == b
    return mns_loss_reference(q, c, log_q, temperature=tau, ids=ids)


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(impl: str, mode: str, b: int, bp: int, k: int, reps: int) -> dict:
    import torch

    torch.set_num_threads(THREADS)
    import mixneg
    import mixneg.torch as mt

    q0, c0, log_q, ids = _data(b, bp, k)
    loss_ids = ids
    if impl.endswith("/no-ids"):
        # The binding's overhead is measured against the Rust call, which
        # the timeit example makes without ids; PyTorch's fused loss cannot
        # remove hits.
        impl, loss_ids = impl[: -len("/no-ids")], None
    if mode == "loss":
        ids = loss_ids
    precision = "bf16" if impl == "mixneg-bf16" else "f32"
    target = torch.arange(b)
    lce_opts = torch.nn.LinearCrossEntropyOptions() if impl == "lce" else None

    def lce(qq, cc):
        import torch.nn.functional as F

        return F.linear_cross_entropy(qq / TAU, cc, target, linear_bias=-log_q, options=lce_opts)

    if mode == "loss":
        q, c = q0.clone().requires_grad_(), c0.clone().requires_grad_()
        if impl in ("mixneg", "mixneg-bf16"):

            def call():
                q.grad = c.grad = None
                loss = mt.mns_loss(q, c, log_q, temperature=TAU, ids=ids, precision=precision)
                loss.backward()
                return loss.item()

        elif impl in ("lce", "lce-ref"):

            def call():
                q.grad = c.grad = None
                loss = lce(q, c)
                loss.backward()
                return loss.item()

        elif impl == "native":
            qn, cn, lqn = q0.numpy(), c0.numpy(), log_q.numpy()
            idn = None if ids is None else ids.numpy()

            def call():
                return mixneg.mns_loss(
                    qn, cn, lqn, temperature=TAU, ids=None if ids is None else idn, threads=THREADS
                ).loss

        else:
            f = torch_loss if impl == "torch" else torch.compile(torch_loss)

            def call():
                q.grad = c.grad = None
                loss = f(q, c, log_q, ids, TAU, b)
                loss.backward()
                return loss.item()

    else:
        from torch import nn

        torch.manual_seed(0)
        vocab, width = 50_000, 64

        def tower():
            return nn.ModuleDict(
                dict(
                    bag=nn.EmbeddingBag(vocab, width, mode="sum"),
                    mlp=nn.Sequential(nn.Linear(width, 128), nn.ReLU(), nn.Linear(128, k)),
                )
            )

        user, item = tower(), tower()
        params = list(user.parameters()) + list(item.parameters())
        opt = torch.optim.Adam(params, lr=1e-3)
        g = torch.Generator().manual_seed(1)
        ufeat = torch.randint(0, vocab, (b, 8), generator=g)
        ifeat = torch.cat([ids[:, None] % vocab, torch.randint(0, vocab, (b + bp, 3), generator=g)], 1)
        compiled = torch.compile(torch_loss) if impl == "torch.compile" else None

        def call():
            qq = user["mlp"](user["bag"](ufeat)) / 8
            cc = item["mlp"](item["bag"](ifeat)) / 8
            if impl in ("mixneg", "mixneg-bf16"):
                loss = mt.mns_loss(qq, cc, log_q, temperature=TAU, ids=loss_ids, precision=precision)
            elif impl in ("lce", "lce-ref"):
                loss = lce(qq, cc)
            else:
                loss = (torch_loss if impl == "torch" else compiled)(qq, cc, log_q, ids, TAU, b)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return loss.item()

    base = _rss_mib()
    t0 = time.perf_counter()
    first = call()
    warm_s = time.perf_counter() - t0
    call()  # a second warm-up: Adam's state, the allocator's pools and any recompile settle here
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return dict(
        median_ms=statistics.median(times) * 1e3,
        times_ms=[round(t * 1e3, 2) for t in times],
        first_loss=first,
        warmup_s=round(warm_s, 2),
        base_rss_mib=round(base),
        peak_rss_mib=round(_rss_mib()),
    )


def rust_call(b: int, bp: int, k: int, reps: int) -> dict:
    exe = os.path.join(ROOT, "target", "release", "examples", "timeit")
    out = subprocess.run([exe, str(b), str(bp), str(k), str(reps)], capture_output=True, text=True, check=True)
    line = out.stdout.splitlines()[0]
    ms = float(line.split("median ")[1].split(" ms")[0])
    return dict(median_ms=ms, first_loss=None, base_rss_mib=None, peak_rss_mib=None, warmup_s=None)


def run_one(impl, mode, shape, reps):
    b, bp, k = shape
    if impl == "rust/no-ids":
        return rust_call(b, bp, k, reps)
    env = dict(os.environ, RAYON_NUM_THREADS=str(THREADS), OMP_NUM_THREADS=str(THREADS), MKL_NUM_THREADS=str(THREADS))
    cmd = [sys.executable, os.path.abspath(__file__), "_worker", impl, mode, str(b), str(bp), str(k), str(reps)]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise SystemExit(f"{impl} {mode} {shape} failed:\n{p.stdout}\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


CONFIGS = [
    ("loss", "mixneg"),
    ("loss", "torch"),
    ("loss", "torch.compile"),
    ("loss", "mixneg/no-ids"),
    ("loss", "mixneg-bf16/no-ids"),
    ("loss", "lce/no-ids"),
    ("loss", "lce-ref/no-ids"),
    ("loss", "native/no-ids"),
    ("loss", "rust/no-ids"),
    ("step", "mixneg"),
    ("step", "torch"),
    ("step", "torch.compile"),
    ("step", "mixneg/no-ids"),
    ("step", "mixneg-bf16/no-ids"),
    ("step", "lce/no-ids"),
]


def group_of(impl: str) -> str:
    """The mixneg configuration a row is compared with: the same problem."""
    return "mixneg/no-ids" if impl.endswith("/no-ids") else "mixneg"


@functools.cache
def usable(impl: str) -> bool:
    """Whether this machine runs the configuration (the bf16 tier needs
    AVX512_BF16; PyTorch's chunked loss needs torch 2.13 or newer)."""
    if impl.startswith("mixneg-bf16"):
        from mixneg import _native

        return _native.cpu_supports("bf16")
    if impl.startswith("lce"):
        import torch

        return hasattr(torch.nn, "LinearCrossEntropyOptions")
    return True


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_worker":
        impl, mode, b, bp, k, reps = sys.argv[2:8]
        print(json.dumps(worker(impl, mode, int(b), int(bp), int(k), int(reps))))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="4096,4096,64 4096,4096,128 16384,16384,64")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reps", type=int, default=5, help="timed calls per process (3 at B ≥ 16384)")
    ap.add_argument("--out", default=os.path.join(HERE, "torch_step_results.csv"))
    ap.add_argument(
        "--configs",
        default="",
        help="comma-separated MODE:IMPL to run (e.g. loss:mixneg/no-ids,loss:lce/no-ids); default: every one",
    )
    args = ap.parse_args()
    wanted = [tuple(c.split(":", 1)) for c in args.configs.split(",") if c]
    unknown = [c for c in wanted if c not in CONFIGS]
    if unknown:
        raise SystemExit(f"unknown configurations {unknown}; known: {[f'{m}:{i}' for m, i in CONFIGS]}")
    missing = {f"{m}:{group_of(i)}" for m, i in wanted if (m, group_of(i)) not in wanted}
    if missing:
        raise SystemExit(f"--configs must include what the rows are compared with: {sorted(missing)}")
    shapes = [tuple(int(x) for x in s.split(",")) for s in args.shapes.split()]
    subprocess.run(["cargo", "build", "--release", "--locked", "--example", "timeit", "-q"], cwd=ROOT, check=True)
    import torch

    import mixneg

    print(f"torch {torch.__version__}, mixneg {mixneg.__version__} ({mixneg.backend_info()[0]}), {THREADS} threads")
    rows = []
    for rnd in range(args.rounds):
        for shape in shapes:
            reps = 3 if shape[0] >= 16384 else args.reps
            configs = [c for c in CONFIGS if usable(c[1]) and (not wanted or c in wanted)]
            order = configs[rnd % len(configs) :] + configs[: rnd % len(configs)]
            results = {}
            for mode, impl in order:
                r = run_one(impl, mode, shape, reps)
                results[(mode, impl)] = r
                rows.append(dict(round=rnd, B=shape[0], Bp=shape[1], K=shape[2], mode=mode, impl=impl, **r))
                print(
                    f"round {rnd} {shape} {mode:4s} {impl:18s} {r['median_ms']:10.1f} ms  peak {r['peak_rss_mib']} MiB",
                    flush=True,
                )
            for (mode, impl), r in results.items():
                ref = results[(mode, group_of(impl))]["first_loss"]
                tol = 3e-2 if "bf16" in impl else 1e-4
                if r["first_loss"] is not None and abs(r["first_loss"] - ref) > tol * abs(ref):
                    raise SystemExit(f"DISAGREEMENT {mode} {impl}: {r['first_loss']} vs {group_of(impl)} {ref}")
    with open(args.out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[k for k in rows[0] if k != "times_ms"], extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    print(f"\nmedian over {args.rounds} rounds (ratio = median of per-round time / mixneg's time; range in brackets)")
    for shape in shapes:
        for mode in ("loss", "step"):
            sel = [r for r in rows if (r["B"], r["Bp"], r["K"]) == shape and r["mode"] == mode]
            for impl in [i for m, i in CONFIGS if m == mode and usable(i) and (not wanted or (m, i) in wanted)]:
                mine = [r for r in sel if r["impl"] == impl]
                ratios = []
                for rnd in range(args.rounds):
                    a = [r["median_ms"] for r in mine if r["round"] == rnd]
                    m_ = [r["median_ms"] for r in sel if r["impl"] == group_of(impl) and r["round"] == rnd]
                    ratios.append(a[0] / m_[0])
                med = statistics.median(r["median_ms"] for r in mine)
                rss = [r["peak_rss_mib"] for r in mine if r["peak_rss_mib"] is not None]
                base = [r["base_rss_mib"] for r in mine if r["base_rss_mib"] is not None]
                rss_s = f"peak {statistics.median(rss):7.0f} MiB (base {statistics.median(base):.0f})" if rss else ""
                print(
                    f"{str(shape):22s} {mode:4s} {impl:18s} {med:10.1f} ms  x{statistics.median(ratios):6.3f} "
                    f"[{min(ratios):.3f}, {max(ratios):.3f}]  {rss_s}"
                )


if __name__ == "__main__":
    main()
