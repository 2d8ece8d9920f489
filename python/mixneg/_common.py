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


def value_summary(xp, f64, u, v, log_q, row_weight):
    """What ``_native.check_values`` judges, for arrays of one library ``xp``
    (``numpy``, or ``torch`` with tensors on any device; ``f64`` converts one
    of its arrays to float64): the first non-finite element (name, flat
    index, value) in the order u, v, log_q, row_weight; the first negative
    weight (index, value); the largest row norms of u and v, the largest
    |log_q| and the largest weight (1 without weights). The reductions are
    stacked and brought to the host in one transfer."""
    named = [("u", u), ("v", v), ("log_q", log_q)] + ([("row_weight", row_weight)] if row_weight is not None else [])
    parts = []
    for _, x in named:
        bad = f64(~xp.isfinite(x.reshape(-1)))
        parts += [bad.max(), f64(bad.argmax())]
    if row_weight is not None:
        neg = f64(row_weight < 0)
        parts += [neg.max(), f64(neg.argmax()), f64(row_weight).max()]
    parts += [(f64(u) ** 2).sum(1).max(), (f64(v) ** 2).sum(1).max(), abs(f64(log_q)).max()]
    got = [float(g) for g in xp.stack(parts).tolist()]
    nonfinite = None
    for i, (name, x) in enumerate(named):
        if got[2 * i]:
            index = int(got[2 * i + 1])
            nonfinite = (name, index, float(x.reshape(-1)[index]))
            break
    at = 2 * len(named)
    negative, max_w = None, 1.0
    if row_weight is not None:
        if got[at]:
            index = int(got[at + 1])
            negative = (index, float(row_weight[index]))
        max_w = max(got[at + 2], 0.0)
        at += 3
    if nonfinite is not None:
        return nonfinite, negative, 0.0, 0.0, 0.0, max_w
    return nonfinite, negative, got[at] ** 0.5, got[at + 1] ** 0.5, got[at + 2], max_w


def signed_parts(coef):
    """(sign, part) for the positive and the negative part of the row
    coefficients ``coef`` (a NumPy array or a torch tensor), skipping an
    empty part: Σ_i coef_i·ℓ_i = Σ_i part⁺_i·ℓ_i − Σ_i part⁻_i·ℓ_i, each a
    fused call with weights ≥ 0."""
    for sign, part in ((1.0, coef.clip(min=0)), (-1.0, (-coef).clip(min=0))):
        if bool((part > 0).any()):
            yield sign, part
