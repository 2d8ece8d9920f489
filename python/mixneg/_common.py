"""What the NumPy, PyTorch and JAX front ends share: the options' checks
(one message each, whichever front end raises it) and the split of signed
row coefficients into two calls (the kernels take weights ≥ 0). Shapes and
values are checked by the crate itself, through ``_native``."""

from __future__ import annotations

import operator

REDUCTIONS = ("mean", "sum", "none")
PRECISIONS = ("f32", "tf32", "bf16")


def reduction(r) -> str:
    if r not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {r!r}")
    return r


def precision(p) -> str:
    if not isinstance(p, str):
        raise TypeError(f"precision must be a string, got {type(p).__name__}")
    if p not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {p!r}")
    return p


def index(name: str, x, minimum: int) -> int:
    """An integer option (not a bool, not a float) of at least ``minimum``."""
    if isinstance(x, bool):
        raise TypeError(f"{name} must be an integer, got bool")
    try:
        i = operator.index(x)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(x).__name__}") from None
    if i < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {i}")
    return i


def host_summary(u, v, log_q, row_weight):
    """What ``_native.check_values`` judges, from NumPy arrays: the first
    non-finite element (name, flat index, value) in the order u, v, log_q,
    row_weight; the first negative weight (index, value); the largest row
    norms of u and v, the largest |log_q| and the largest weight (1 without
    weights)."""
    import numpy as np

    named = [("u", u), ("v", v), ("log_q", log_q)] + ([("row_weight", row_weight)] if row_weight is not None else [])
    nonfinite = None
    for name, x in named:
        flat = np.asarray(x).ravel()
        bad = np.flatnonzero(~np.isfinite(flat))
        if bad.size:
            nonfinite = (name, int(bad[0]), float(flat[bad[0]]))
            break
    negative, max_w = None, 1.0
    if row_weight is not None:
        w = np.asarray(row_weight, dtype=np.float64)
        neg = np.flatnonzero(w < 0)
        if neg.size:
            negative = (int(neg[0]), float(w[neg[0]]))
        max_w = float(max(w.max(initial=0.0), 0.0))
    if nonfinite is not None:
        return nonfinite, negative, 0.0, 0.0, 0.0, max_w

    def norm(x):
        return float(np.sqrt((np.asarray(x, dtype=np.float64) ** 2).sum(axis=1).max(initial=0.0)))

    return (
        nonfinite,
        negative,
        norm(u),
        norm(v),
        float(np.abs(np.asarray(log_q, dtype=np.float64)).max(initial=0.0)),
        max_w,
    )


def signed_parts(coef):
    """(sign, part) for the positive and the negative part of the row
    coefficients ``coef`` (a NumPy array or a torch tensor), skipping an
    empty part: Σ_i coef_i·ℓ_i = Σ_i part⁺_i·ℓ_i − Σ_i part⁻_i·ℓ_i, each a
    fused call with weights ≥ 0."""
    for sign, part in ((1.0, coef.clip(min=0)), (-1.0, (-coef).clip(min=0))):
        if bool((part > 0).any()):
            yield sign, part
