"""Shared pieces of the Python tests: the float64 PyTorch reference of the
loss (plain PyTorch, no call into the crate) and the random cases."""

import dataclasses
from typing import Optional

import numpy as np
import pytest
import torch

from mixneg.torch.reference import mns_loss_reference

# The bar of the issue, on realistic inputs: the loss within 1e-6 relative
# of the float64 reference, the gradients within 1e-5 relative (normwise).
# The absolute floors only matter where the reference is ~0 (N = 1: every
# row's loss and gradient vanish) and sit far below any realistic value.
LOSS_RTOL, LOSS_ATOL = 1e-6, 1e-7
GRAD_RTOL, GRAD_ATOL = 1e-5, 1e-9


def reference(u, v, log_q, temperature, ids=None, row_weight=None, correct_positive=True, offset=0, reduction="mean"):
    """The float64 PyTorch reference (``mixneg.torch.mns_loss_reference``,
    which materializes the B×N logits; autograd gives its gradients)."""
    return mns_loss_reference(
        u,
        v,
        log_q,
        temperature=temperature,
        ids=ids,
        row_weight=row_weight,
        correct_positive=correct_positive,
        positive_offset=offset,
        reduction=reduction,
    )


@dataclasses.dataclass
class Case:
    b: int
    bp: int
    k: int
    temperature: float
    offset: int
    ids: bool
    weights: bool
    correct_positive: bool
    seed: int

    @property
    def n(self) -> int:
        return self.b + self.bp

    def arrays(self):
        """float64 tensors: embeddings of norm ~1 (a trained two-tower model's
        are typically normalized), log_q of real sampling probabilities
        (−3 … −12), ids with duplicates, weights with zeros."""
        g = torch.Generator().manual_seed(self.seed)
        f64 = torch.float64
        u = torch.randn(self.b, self.k, generator=g, dtype=f64) / self.k**0.5
        v = torch.randn(self.n, self.k, generator=g, dtype=f64) / self.k**0.5
        log_q = -3 - 9 * torch.rand(self.n, generator=g, dtype=f64)
        ids: Optional[torch.Tensor] = None
        if self.ids:
            ids = torch.randint(0, max(2, self.n // 2), (self.n,), generator=g)
        w: Optional[torch.Tensor] = None
        if self.weights:
            w = torch.rand(self.b, generator=g, dtype=f64) * 2
            w[torch.rand(self.b, generator=g) < 0.3] = 0.0
        return u, v, log_q, ids, w


def _cases():
    shapes = [(1, 0, 1), (1, 3, 5), (7, 0, 3), (5, 11, 1), (13, 29, 17), (64, 100, 33), (40, 57, 64), (3, 200, 8)]
    out = []
    for i, (b, bp, k) in enumerate(shapes):
        n = b + bp
        for j, offset in enumerate(sorted({0, (n - b) // 2, n - b})):
            out.append(
                Case(
                    b,
                    bp,
                    k,
                    temperature=(0.05, 0.2, 1.0)[(i + j) % 3],
                    offset=offset,
                    ids=(i + j) % 2 == 0,
                    weights=(i + j) % 3 != 1,
                    correct_positive=(i + j) % 4 != 3,
                    seed=100 * i + j,
                )
            )
    return out


CASES = _cases()


def case_id(c: Case) -> str:
    return (
        f"B{c.b}-Bp{c.bp}-K{c.k}-o{c.offset}-t{c.temperature}"
        + ("-ids" if c.ids else "")
        + ("-w" if c.weights else "")
        + ("" if c.correct_positive else "-uncorr")
    )


@pytest.fixture(params=CASES, ids=case_id)
def case(request) -> Case:
    return request.param


def rel_err(got, want) -> float:
    got = torch.as_tensor(np.asarray(got) if not isinstance(got, torch.Tensor) else got).to(torch.float64)
    want = torch.as_tensor(want).to(torch.float64)
    return float((got - want).norm() / want.norm().clamp_min(1e-300))


def assert_close_grad(name, got, want, rtol=GRAD_RTOL):
    got = torch.as_tensor(np.asarray(got) if not isinstance(got, torch.Tensor) else got).to(torch.float64)
    want = want.to(torch.float64)
    assert got.shape == want.shape, (name, got.shape, want.shape)
    err = float((got - want).norm())
    bound = rtol * float(want.norm()) + GRAD_ATOL * want.numel() ** 0.5
    assert err <= bound, f"{name}: |Δ| = {err:.3e} > {bound:.3e} (|ref| = {float(want.norm()):.3e})"


def assert_close_loss(got, want, rtol=LOSS_RTOL):
    got = torch.as_tensor(got).to(torch.float64)
    want = want.to(torch.float64)
    if want.dim() == 0:
        err, bound = float((got - want).abs()), rtol * float(want.abs()) + LOSS_ATOL
    else:
        err, bound = float((got - want).norm()), rtol * float(want.norm()) + LOSS_ATOL * want.numel() ** 0.5
    assert err <= bound, f"loss: |Δ| = {err:.3e} > {bound:.3e} (ref {want})"
