"""The MNS loss written plainly in PyTorch: the B×N logits materialized,
autograd for the gradients. Slow and memory-hungry (B·N floats), exact in
float64: what the tests check the fused kernels against and what the
benchmarks check every peer against before timing it."""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import Tensor


def mns_loss_reference(
    query: Tensor,
    candidates: Tensor,
    log_q: Tensor,
    *,
    temperature: Union[float, Tensor] = 1.0,
    ids: Optional[Tensor] = None,
    row_weight: Optional[Tensor] = None,
    correct_positive: bool = True,
    positive_offset: int = 0,
    reduction: str = "mean",
) -> Tensor:
    """The loss of docs/design.md §2 with the arguments of
    ``mixneg.torch.mns_loss``, in the inputs' dtype and on their device:
    s_ij = ⟨q_i, c_j⟩/τ − log_q_j (the positive j = i + offset uncorrected
    when ``correct_positive`` is False), accidental hits (ids_j = ids_pos,
    j ≠ pos) removed, ℓ_i = logsumexp_j s_ij − s_i,pos, weighted by
    ``row_weight``, then reduced ("mean": (1/B) Σ w_i ℓ_i; "sum"; "none")."""
    b, n = query.shape[0], candidates.shape[0]
    rows_ix = torch.arange(b, device=query.device)
    pos = rows_ix + positive_offset
    s = query @ candidates.T / temperature - log_q
    if not correct_positive:
        s = s.clone()
        s[rows_ix, pos] = s[rows_ix, pos] + log_q[pos]
    if ids is not None:
        cols = torch.arange(n, device=query.device)
        hit = (ids[None, :] == ids[pos][:, None]) & (cols[None, :] != pos[:, None])
        s = s.masked_fill(hit, float("-inf"))
    rows = torch.logsumexp(s, dim=1) - s[rows_ix, pos]
    if row_weight is not None:
        rows = rows * row_weight
    if reduction == "mean":
        return rows.mean()
    if reduction == "sum":
        return rows.sum()
    return rows
