"""The distributed contract on gloo, with 2 and 3 processes on this machine.

With R ranks of B queries each, the mean over ranks of the returned losses
equals mixneg.torch.mns_loss on the concatenated batch (candidates = every
rank's positives in rank order, then every rank's negatives in rank order),
and each rank's input gradients equal R × the single-process gradients of
its slice (the mean over ranks of a shared temperature's gradient equals the
single-process one: that is what DDP's averaging computes).
"""

import os
import subprocess
import sys

import pytest
import torch

import mixneg.torch as mt

sys.path.insert(0, os.path.dirname(__file__))
from _dist_data import rank_inputs  # noqa: E402

WORKER = os.path.join(os.path.dirname(__file__), "_dist_worker.py")
# Both sides compute in float32; the bar's tolerances (1e-6 on the loss,
# 1e-5 normwise on gradients) apply to each against float64, so to their
# difference twice over.
LOSS_RTOL, GRAD_RTOL = 2e-6, 2e-5


def _run(tmp_path, world, b, bp, k, gather=True, with_ids=True, reduction="mean", bad=False):
    env = dict(os.environ, WORLD_SIZE=str(world))
    args = [str(tmp_path), str(b), str(bp), str(k), "1" if gather else "0", "1" if with_ids else "0", reduction]
    args.append("1" if bad else "0")
    procs = [
        subprocess.Popen(
            [sys.executable, WORKER, *args],
            env=dict(env, RANK=str(r), LOCAL_RANK=str(r)),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for r in range(world)
    ]
    logs = []
    for p in procs:
        out, _ = p.communicate(timeout=300)
        logs.append(out.decode(errors="replace"))
    for r, p in enumerate(procs):
        assert p.returncode == 0, f"rank {r} failed:\n{logs[r]}"
    return [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]


def _rel(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def _single(world, b, bp, k, with_ids, reduction):
    xs = [rank_inputs(r, b, bp, k, with_ids) for r in range(world)]
    q = torch.cat([x["query"].detach() for x in xs]).requires_grad_()
    pos = [x["positives"].detach().requires_grad_() for x in xs]
    neg = [x["negatives"].detach().requires_grad_() for x in xs]
    t = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    lq = torch.cat([x["log_q_pos"] for x in xs] + [x["log_q_neg"] for x in xs])
    ids = torch.cat([x["ids_pos"] for x in xs] + [x["ids_neg"] for x in xs]) if with_ids else None
    w = torch.cat([x["row_weight"] for x in xs])
    loss = mt.mns_loss(q, torch.cat(pos + neg), lq, temperature=t, ids=ids, row_weight=w, reduction=reduction)
    g = torch.cat([x["upstream"] for x in xs]) if reduction == "none" else torch.tensor(1.0, dtype=torch.float64)
    (loss * g).sum().backward()
    return loss.detach(), q.grad, [p.grad for p in pos], [n.grad for n in neg], t.grad


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_contract(tmp_path, world, reduction):
    b, bp, k = 7, 5, 6
    got = _run(tmp_path, world, b, bp, k, reduction=reduction)
    loss, dq, dpos, dneg, dt = _single(world, b, bp, k, True, reduction)
    if reduction == "mean":
        mean = sum(g["loss"] for g in got) / world
        assert abs(mean.item() - loss.item()) <= LOSS_RTOL * abs(loss.item()), (mean, loss)
    else:
        rows = torch.cat([g["loss"] for g in got])
        assert _rel(rows, loss) <= LOSS_RTOL
    # "mean": each rank's loss is the mean over its B rows, the global one over
    # R·B, so rank gradients are R × the global one; "none" (upstream g per
    # row, summed): the same sum of per-row terms on both sides, factor 1.
    f = world if reduction == "mean" else 1
    for r, g in enumerate(got):
        assert g["d_query"].dtype == torch.float64
        assert _rel(g["d_query"], f * dq[r * b : (r + 1) * b]) <= GRAD_RTOL
        assert _rel(g["d_positives"], f * dpos[r]) <= GRAD_RTOL
        assert _rel(g["d_negatives"], f * dneg[r]) <= GRAD_RTOL
    dt_sum = sum(g["d_temperature"] for g in got)
    assert abs((dt_sum / f - dt).item()) <= GRAD_RTOL * abs(dt.item())


def test_own_negatives_only(tmp_path):
    """gather_negatives=False: rank r scores its queries against every rank's
    positives and its own negatives."""
    world, b, bp, k = 2, 4, 6, 3
    got = _run(tmp_path, world, b, bp, k, gather=False, with_ids=False)
    xs = [rank_inputs(r, b, bp, k, False) for r in range(world)]
    pos = torch.cat([x["positives"].detach() for x in xs])
    for r, g in enumerate(got):
        x = xs[r]
        lq = torch.cat([x2["log_q_pos"] for x2 in xs] + [x["log_q_neg"]])
        q = x["query"].detach().requires_grad_()
        neg = x["negatives"].detach().requires_grad_()
        loss = mt.mns_loss(
            q, torch.cat([pos, neg]), lq, temperature=0.3, row_weight=x["row_weight"], positive_offset=r * b
        )
        loss.backward()
        assert abs(g["loss"].item() - loss.item()) <= LOSS_RTOL * abs(loss.item())
        assert _rel(g["d_query"], q.grad) <= GRAD_RTOL
        assert _rel(g["d_negatives"], neg.grad) <= GRAD_RTOL


def test_mismatched_shapes_raise_on_every_rank(tmp_path):
    got = _run(tmp_path, 3, 4, 5, 3, bad=True)
    for r, g in enumerate(got):
        assert "error" in g, f"rank {r} did not raise"
        assert "every rank must pass the same shapes" in g["error"]
