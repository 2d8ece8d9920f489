"""The inputs of rank r in the distributed tests, from a seed shared by the
worker processes and the test that checks them."""

import torch


def rank_inputs(rank: int, b: int, bp: int, k: int, with_ids: bool) -> dict:
    g = torch.Generator().manual_seed(1000 + rank)
    f64 = torch.float64

    def leaf(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=f64) * scale).requires_grad_()

    ids_pos = ids_neg = None
    if with_ids:
        # Few distinct ids, so that hits occur within and across ranks.
        ids_pos = torch.randint(0, 3 * b, (b,), generator=g)
        ids_neg = torch.randint(0, 3 * b, (bp,), generator=g)
    return {
        "query": leaf(b, k, scale=0.5),
        "positives": leaf(b, k, scale=0.5),
        "negatives": leaf(bp, k, scale=0.5),
        "log_q_pos": -torch.rand(b, generator=g, dtype=f64) * 5 - 1,
        "log_q_neg": -torch.rand(bp, generator=g, dtype=f64) * 5 - 1,
        "ids_pos": ids_pos,
        "ids_neg": ids_neg,
        # The same leaf value on every rank (a learned temperature).
        "temperature": torch.tensor(0.3, dtype=f64, requires_grad=True),
        "row_weight": torch.rand(b, generator=g, dtype=f64) + 0.5,
        "upstream": torch.randn(b, generator=g, dtype=f64),
    }
