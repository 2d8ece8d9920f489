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


def signed_parts(coef):
    """(sign, part) for the positive and the negative part of the row
    coefficients ``coef`` (a NumPy array or a torch tensor), skipping an
    empty part: Σ_i coef_i·ℓ_i = Σ_i part⁺_i·ℓ_i − Σ_i part⁻_i·ℓ_i, each a
    fused call with weights ≥ 0."""
    for sign, part in ((1.0, coef.clip(min=0)), (-1.0, (-coef).clip(min=0))):
        if bool((part > 0).any()):
            yield sign, part
