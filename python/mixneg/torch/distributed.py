"""Negatives shared across the ranks of a torch.distributed group.

Rank r of R holds B queries, their B positives and B′ sampled negatives. The
fused loss of rank r scores its queries against every rank's candidates,
gathered as [P₀ … P_{R−1}, N₀ … N_{R−1}] (positives in rank order, then
negatives in rank order; only this rank's negatives with
``gather_negatives=False``), with ``positive_offset = r·B`` so that query i's
positive is its own row of P_r (docs/design.md §8).

Contract (tested on gloo with 2 and 3 processes): the mean over ranks of the
returned losses equals ``mixneg.torch.mns_loss`` on the concatenated batch,
and after ``backward()`` each rank's input gradients are R × the
single-process gradients of its slice — which DDP's gradient averaging turns
into exactly the global gradient.

The gather is differentiable: its backward sums every rank's gradient of the
gathered tensor (an all-reduce; NCCL and other backends with reduce-scatter
use that instead) and keeps this rank's slice.
"""

from __future__ import annotations

from typing import Optional, Union

import torch
import torch.distributed as dist
from torch import Tensor

from . import mns_loss as _mns_loss

__all__ = ["mns_loss", "all_gather"]


class _AllGather(torch.autograd.Function):
    """cat(all_gather(x)) along dim 0 with autograd: backward sums the
    upstream gradient over the ranks and returns this rank's rows."""

    @staticmethod
    def forward(ctx, x: Tensor, group) -> Tensor:
        ctx.group = group
        world = dist.get_world_size(group)
        ctx.rows = x.shape[0]
        ctx.rank = dist.get_rank(group)
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous(), group=group)
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, g: Tensor):
        g = g.contiguous()
        r, rows = ctx.rank, ctx.rows
        if dist.get_backend(ctx.group) == dist.Backend.NCCL:
            out = torch.empty((rows,) + g.shape[1:], dtype=g.dtype, device=g.device)
            dist.reduce_scatter_tensor(out, g, group=ctx.group)
            return out, None
        total = g.clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=ctx.group)
        return total[r * rows : (r + 1) * rows].clone(), None


def all_gather(x: Tensor, group=None) -> Tensor:
    """Every rank's ``x`` (same shape on every rank) concatenated along dim 0
    in rank order; differentiable when ``x`` requires grad."""
    if x.requires_grad and torch.is_grad_enabled():
        return _AllGather.apply(x, group)
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, x.contiguous(), group=group)
    return torch.cat(parts, dim=0)


def _check_shapes(query, positives, negatives, log_q_pos, log_q_neg, ids_pos, ids_neg, group) -> None:
    """Every rank must hold the same (B, B′, K) and the same optional
    arguments; checked with one small all-gather, so that every rank raises
    the same ValueError instead of hanging in a mismatched collective."""
    for name, t, ndim in (
        ("query", query, 2),
        ("positives", positives, 2),
        ("negatives", negatives, 2),
        ("log_q_pos", log_q_pos, 1),
        ("log_q_neg", log_q_neg, 1),
    ):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != ndim:
            raise ValueError(f"{name} must have {ndim} dimension(s), got shape {tuple(t.shape)}")
    b, k = query.shape
    local = [
        b,
        k,
        positives.shape[0],
        positives.shape[1],
        negatives.shape[0],
        negatives.shape[1],
        log_q_pos.shape[0],
        log_q_neg.shape[0],
        -1 if ids_pos is None else ids_pos.shape[0],
        -1 if ids_neg is None else ids_neg.shape[0],
    ]
    shapes = torch.tensor(local, dtype=torch.int64, device=query.device)
    every = all_gather(shapes.unsqueeze(0), group)
    rank = dist.get_rank(group)
    mine = every[rank].tolist()
    for r, theirs in enumerate(every.tolist()):
        if theirs != mine:
            raise ValueError(
                f"rank {r} passed shapes {theirs} but rank {rank} passed {mine} "
                "([B, K, positives rows, cols, negatives rows, cols, log_q_pos, log_q_neg, ids_pos, ids_neg]; "
                "-1 = None): every rank must pass the same shapes"
            )
    bp = negatives.shape[0]
    for name, got, want in (
        ("positives rows", positives.shape[0], b),
        ("positives columns", positives.shape[1], k),
        ("negatives columns", negatives.shape[1], k),
        ("log_q_pos", log_q_pos.shape[0], b),
        ("log_q_neg", log_q_neg.shape[0], bp),
    ):
        if got != want:
            raise ValueError(f"{name} is {got}, expected {want} (query is {b}×{k}, negatives {bp} rows)")
    if (ids_pos is None) != (ids_neg is None):
        raise ValueError("pass both ids_pos and ids_neg, or neither")
    if ids_pos is not None and (ids_pos.shape[0] != b or ids_neg.shape[0] != bp):
        raise ValueError(
            f"ids_pos has {ids_pos.shape[0]} entries and ids_neg {ids_neg.shape[0]}, expected {b} and {bp}"
        )


def mns_loss(
    query: Tensor,
    positives: Tensor,
    negatives: Tensor,
    log_q_pos: Tensor,
    log_q_neg: Tensor,
    *,
    ids_pos: Optional[Tensor] = None,
    ids_neg: Optional[Tensor] = None,
    group=None,
    gather_negatives: bool = True,
    temperature: Union[float, Tensor] = 1.0,
    row_weight: Optional[Tensor] = None,
    correct_positive: bool = True,
    reduction: str = "mean",
    precision: Optional[str] = None,
    validate: bool = True,
) -> Tensor:
    """This rank's MNS loss over its own queries against the candidates of
    every rank of ``group`` (the default group when None).

    ``query`` and ``positives`` (B×K, row i the positive of query i),
    ``negatives`` (B′×K), ``log_q_pos`` (B), ``log_q_neg`` (B′), optional
    ``ids_pos`` (B) / ``ids_neg`` (B′) for accidental-hit removal across all
    gathered candidates, ``row_weight`` (B) for this rank's rows. Every rank
    must pass the same shapes (CPU tensors with gloo, CUDA tensors with
    NCCL). ``reduction``, ``precision`` and ``validate`` as in
    ``mixneg.torch.mns_loss``
    ("mean" = this rank's mean loss over its B queries). Gradients flow to
    ``query``, to every rank's ``positives`` and (when gathered) ``negatives``
    through the gather, and to ``temperature``.
    """
    if not dist.is_available() or not dist.is_initialized():
        raise ValueError("torch.distributed is not initialized: call torch.distributed.init_process_group first")
    _check_shapes(query, positives, negatives, log_q_pos, log_q_neg, ids_pos, ids_neg, group)
    rank = dist.get_rank(group)
    b = query.shape[0]
    pos = all_gather(positives, group)
    neg = all_gather(negatives, group) if gather_negatives else negatives
    lq_pos = all_gather(log_q_pos.detach(), group)
    lq_neg = all_gather(log_q_neg.detach(), group) if gather_negatives else log_q_neg.detach()
    ids = None
    if ids_pos is not None:
        ip = all_gather(ids_pos.to(torch.int64), group)
        ineg = all_gather(ids_neg.to(torch.int64), group) if gather_negatives else ids_neg.to(torch.int64)
        ids = torch.cat([ip, ineg])
    return _mns_loss(
        query,
        torch.cat([pos, neg]),
        torch.cat([lq_pos, lq_neg]),
        temperature=temperature,
        ids=ids,
        row_weight=row_weight,
        correct_positive=correct_positive,
        positive_offset=rank * b,
        reduction=reduction,
        precision=precision,
        validate=validate,
    )
