"""mixneg: the fused Mixed Negative Sampling loss for two-tower retrieval.

For queries U (B×K), candidates V (N×K, row i + o the positive of query i),
log Q (N), temperature τ, optional row weights w and item ids:

    s_ij = <u_i, v_j>/τ − log_q[j]       (the positive keeps −log_q only if correct_positive)
    s_ij = −inf for j ≠ i+o with ids[j] = ids[i+o]   (accidental hits removed)
    ℓ_i = lse_i − s_i,i+o,   L = (1/B) Σ_i w_i ℓ_i
    ∂L/∂U = G·V/τ,  ∂L/∂V = Gᵀ·U/τ,  ∂L/∂τ = −<U, ∂L/∂U>/τ,
    G_ij = (w_i/B)(P_ij − δ_j,i+o),  P = softmax_j(s)

computed in one call that never stores the B×N logits (the Rust crate's
SIMD kernels; docs/design.md in the repository).

* ``mixneg.mns_loss`` / ``mixneg.mns_forward``: NumPy arrays.
* ``mixneg.torch.mns_loss``, ``mixneg.torch.MnsLoss``: PyTorch, with autograd,
  registered as the custom op ``torch.ops.mixneg.mns_loss``.
* ``mixneg.torch.distributed.mns_loss``: negatives shared across the ranks of
  a torch.distributed group.
* ``mixneg.jax.mns_loss``: JAX (custom_vjp + pure_callback, CPU).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Optional

import numpy as np

from . import _common, _native

__all__ = ["MnsResult", "mns_loss", "mns_forward", "backend_info", "__version__"]

__version__ = _native.__version__


@dataclass(frozen=True)
class MnsResult:
    """What one call returns.

    ``loss`` = L = (1/B) Σ_i w_i ℓ_i; ``d_u`` = ∂L/∂U (B×K); ``d_v`` = ∂L/∂V
    (N×K); ``d_temperature`` = ∂L/∂τ; ``lse`` (B) the row log-sum-exp;
    ``row_loss`` (B) the unweighted ℓ_i; ``top1`` (B, bool) whether the
    positive's logit is the row maximum. The gradients are None for
    ``mns_forward``.
    """

    loss: float
    d_u: Optional[np.ndarray]
    d_v: Optional[np.ndarray]
    d_temperature: Optional[float]
    lse: np.ndarray
    row_loss: np.ndarray
    top1: np.ndarray


def backend_info() -> tuple[str, int]:
    """(kernel name, default thread count) of the CPU backend the calls use."""
    return _native.backend_info()


def _float_array(name: str, x, ndim: int, bf16: bool = False) -> np.ndarray:
    """``x`` as a C-contiguous float32 array of rank ``ndim``: no copy when it
    already is one; float16/float64 are converted (a copy), other dtypes are a
    TypeError, another rank a ValueError. With ``bf16``, a bfloat16 array
    (``ml_dtypes.bfloat16``, as JAX uses) is passed on as its uint16 bit
    patterns, which the native module reads as bf16 (no copy either)."""
    if not isinstance(x, np.ndarray):
        if hasattr(x, "__array__") or isinstance(x, (list, tuple)):
            x = np.asarray(x)
        else:
            raise TypeError(f"{name} must be a NumPy array, got {type(x).__name__}")
    bits = bf16 and x.dtype.name == "bfloat16" and x.dtype.itemsize == 2
    if x.dtype.kind != "f" and not bits:
        raise TypeError(f"{name} must be a floating-point array (float32 is read in place), got dtype {x.dtype}")
    if x.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {x.shape}")
    if bits:
        return np.ascontiguousarray(x).view(np.uint16)
    if x.dtype == np.float32:
        return np.ascontiguousarray(x)
    with np.errstate(over="ignore", invalid="ignore"):
        y = np.ascontiguousarray(x, dtype=np.float32)
    overflow = np.isinf(y) & np.isfinite(x)
    if overflow.any():
        i = int(np.flatnonzero(overflow.ravel())[0])
        raise ValueError(f"{name}[{i}] = {x.ravel()[i]!r} overflows float32 (the kernels compute in float32)")
    return y


def _ids_array(ids, n_hint: str = "ids") -> Optional[np.ndarray]:
    if ids is None:
        return None
    x = np.asarray(ids)
    if x.dtype.kind not in "iu":
        raise TypeError(f"ids must be an integer array, got dtype {x.dtype}")
    if x.ndim != 1:
        raise ValueError(f"ids must have 1 dimension, got shape {x.shape}")
    if x.dtype.kind == "u" and x.size and x.max() > np.iinfo(np.int64).max:
        raise ValueError("ids must fit in int64")
    return np.ascontiguousarray(x, dtype=np.int64)


def _temperature(t) -> float:
    if isinstance(t, bool) or not isinstance(t, (int, float, np.floating, np.integer)):
        raise TypeError(f"temperature must be a real number, got {type(t).__name__}")
    t = float(t)
    if not (np.isfinite(t) and t > 0.0):
        raise ValueError(f"temperature must be finite and > 0, got {t}")
    return t


def _call(
    grad, query, candidates, log_q, temperature, ids, row_weight, correct_positive, positive_offset, threads, precision
):
    _common.precision(precision)
    u = _float_array("query", query, 2, bf16=True)
    v = _float_array("candidates", candidates, 2, bf16=True)
    log_q = _float_array("log_q", log_q, 1)
    w = None if row_weight is None else _float_array("row_weight", row_weight, 1)
    out = _native.mns_loss(
        u,
        v,
        log_q,
        temperature=_temperature(temperature),
        ids=_ids_array(ids),
        row_weight=w,
        correct_positive=bool(correct_positive),
        positive_offset=_common.index("positive_offset", positive_offset, 0),
        threads=0 if threads is None else _common.index("threads", threads, 1),
        grad=grad,
        precision=precision,
    )
    return MnsResult(**out)


def mns_loss(
    query,
    candidates,
    log_q,
    *,
    temperature: float = 1.0,
    ids=None,
    row_weight=None,
    correct_positive: bool = True,
    positive_offset: int = 0,
    threads: Optional[int] = None,
    precision: str = "f32",
) -> MnsResult:
    """The fused MNS loss and its gradients on NumPy arrays.

    ``query`` (B×K) query embeddings, ``candidates`` (N×K) candidate embeddings
    with row i + ``positive_offset``
    the positive of query i (0 ≤ offset ≤ N − B), ``log_q`` (N) the log
    sampling probabilities, ``ids`` (N, integers) to remove accidental hits,
    ``row_weight`` (B, ≥ 0). C-contiguous float32 arrays are read in place,
    and bfloat16 ``query`` and ``candidates`` (``ml_dtypes.bfloat16``) too;
    other float dtypes are converted. The GIL is released during the call and
    no input is modified. ``threads``: worker threads (default: all of
    rayon's, i.e. ``RAYON_NUM_THREADS`` or every core). ``precision``: "f32"
    (default), or "bf16" (the products' factors rounded to bf16, f32 sums)
    on a CPU with AVX512_BF16; "tf32" is a CUDA tier, reached through
    ``mixneg.torch`` with CUDA tensors. A tier the CPU cannot compute raises
    ValueError.
    Bad input raises ValueError or TypeError with the numbers.
    """
    return _call(True, **locals())  # every argument, by name


def mns_forward(query, candidates, log_q, **options) -> MnsResult:
    """The forward only (loss, lse, row_loss, top1; a third of the flops), for
    evaluation: the same arguments as ``mns_loss``; the gradients are None."""
    call = inspect.signature(mns_loss).bind(query, candidates, log_q, **options)
    call.apply_defaults()
    return _call(False, **call.arguments)


mns_forward.__signature__ = inspect.signature(mns_loss)
