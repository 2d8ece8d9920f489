"""JAX front end: ``mns_loss`` through ``jax.custom_vjp`` and
``jax.pure_callback`` on the CPU kernels, usable under ``jax.jit`` and
``jax.grad``.

The primal (no gradient requested) runs the forward-only kernel. Under
differentiation, "mean" and "sum" run one full fused call in the forward and
keep ∂L/∂U, ∂L/∂V, ∂L/∂τ as residuals (backward scales them); "none" runs the
forward only and a second fused call in backward, with row weights
w_i·g_i·B — as in ``mixneg.torch``. ``log_q`` and ``ids`` get zero
cotangents; ``row_weight`` gets ∂/∂w_i = ℓ_i/B (mean).

Inputs are computed in float32 (bfloat16 embeddings are read as they are);
outputs have the inputs' dtypes. ``precision`` picks the products' tier as
in ``mixneg.torch``: by default "bf16" for bfloat16 ``query`` and
``candidates`` on a CPU with AVX512_BF16, else "f32". Shape and
static errors raise ValueError/TypeError at trace time; a value error found
by the kernels (a NaN, τ ≤ 0) raises ValueError when the inputs are concrete,
and surfaces as JAX's runtime error carrying the same message under ``jit``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from . import _common, _float_array, _native

__all__ = ["mns_loss"]


def _f32(x) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(x), dtype=np.float32)


def _host(q, c, lq, t, ids, w, *, opts, grad, coef=None):
    """The native call on host arrays; ``coef`` (B) replaces the row weights
    by w·coef·B and splits its sign into two calls (the kernels take w ≥ 0)."""
    correct_positive, offset, has_ids, has_w, precision = opts
    args = dict(
        temperature=float(np.asarray(t)),
        ids=np.ascontiguousarray(ids, dtype=np.int64) if has_ids else None,
        correct_positive=correct_positive,
        positive_offset=offset,
        precision=precision,
    )
    # bfloat16 embeddings as their bit patterns (no conversion), as NumPy's.
    q, c, lq = _float_array("query", q, 2, bf16=True), _float_array("candidates", c, 2, bf16=True), _f32(lq)
    if coef is None:
        return _native.mns_loss(q, c, lq, row_weight=_f32(w) if has_w else None, grad=grad, **args)
    b = q.shape[0]
    cw = np.asarray(coef, dtype=np.float64) * b * (np.asarray(w, dtype=np.float64) if has_w else 1.0)
    du = np.zeros(q.shape, np.float32)
    dv = np.zeros(c.shape, np.float32)
    dt = np.float32(0)
    for sign, part in _common.signed_parts(cw):
        r = _native.mns_loss(q, c, lq, row_weight=part.astype(np.float32), grad=True, **args)
        du += np.float32(sign) * r["d_u"]
        dv += np.float32(sign) * r["d_v"]
        dt += np.float32(sign * r["d_temperature"])
    return du, dv, dt


@functools.cache
def _op(correct_positive: bool, offset: int, reduction: str, has_ids: bool, has_w: bool, precision: str):
    opts = (correct_positive, offset, has_ids, has_w, precision)

    def reduced(r, b, w):
        if reduction == "mean":
            return np.float32(r["loss"])
        if reduction == "sum":
            return np.float32(r["loss"] * b)
        rl = r["row_loss"]
        return (rl * _f32(w)) if has_w else rl

    def loss_shape(q):
        b = q.shape[0]
        return jax.ShapeDtypeStruct((b,) if reduction == "none" else (), q.dtype)

    def forward_only(q, c, lq, t, ids, w):
        def cb(q, c, lq, t, ids, w):
            r = _host(q, c, lq, t, ids, w, opts=opts, grad=False)
            return (np.asarray(reduced(r, q.shape[0], w), dtype=q.dtype), r["row_loss"].astype(q.dtype))

        b = q.shape[0]
        shapes = (loss_shape(q), jax.ShapeDtypeStruct((b,), q.dtype))
        return jax.pure_callback(cb, shapes, q, c, lq, t, ids, w, vmap_method="sequential")

    @jax.custom_vjp
    def f(q, c, lq, t, ids, w):
        return forward_only(q, c, lq, t, ids, w)[0]

    def fwd(q, c, lq, t, ids, w):
        if reduction == "none":
            loss, row_loss = forward_only(q, c, lq, t, ids, w)
            return loss, (q, c, lq, t, ids, w, row_loss, None, None, None)

        def cb(q, c, lq, t, ids, w):
            r = _host(q, c, lq, t, ids, w, opts=opts, grad=True)
            return (
                np.asarray(reduced(r, q.shape[0], w), dtype=q.dtype),
                r["row_loss"].astype(q.dtype),
                r["d_u"].astype(q.dtype),
                r["d_v"].astype(c.dtype),
                np.asarray(r["d_temperature"], dtype=t.dtype),
            )

        b, _ = q.shape
        shapes = (
            loss_shape(q),
            jax.ShapeDtypeStruct((b,), q.dtype),
            jax.ShapeDtypeStruct(q.shape, q.dtype),
            jax.ShapeDtypeStruct(c.shape, c.dtype),
            jax.ShapeDtypeStruct((), t.dtype),
        )
        loss, row_loss, du, dv, dt = jax.pure_callback(cb, shapes, q, c, lq, t, ids, w, vmap_method="sequential")
        return loss, (q, c, lq, t, ids, w, row_loss, du, dv, dt)

    def bwd(res, g):
        q, c, lq, t, ids, w, row_loss, du, dv, dt = res
        b = q.shape[0]
        zero_ids = np.zeros(ids.shape, dtype=jax.dtypes.float0)
        if reduction == "none":

            def cb(q, c, lq, t, ids, w, g):
                du, dv, dt = _host(q, c, lq, t, ids, w, opts=opts, grad=True, coef=g)
                return du.astype(q.dtype), dv.astype(c.dtype), np.asarray(dt, dtype=t.dtype)

            shapes = (
                jax.ShapeDtypeStruct(q.shape, q.dtype),
                jax.ShapeDtypeStruct(c.shape, c.dtype),
                jax.ShapeDtypeStruct((), t.dtype),
            )
            gq, gc, gt = jax.pure_callback(cb, shapes, q, c, lq, t, ids, w, g, vmap_method="sequential")
            gw = (g * row_loss).astype(w.dtype) if has_w else jnp.zeros_like(w)
        else:
            scale = g * b if reduction == "sum" else g
            gq, gc, gt = du * scale, dv * scale, dt * scale
            gw = (row_loss * (scale / b)).astype(w.dtype) if has_w else jnp.zeros_like(w)
        return gq, gc, jnp.zeros_like(lq), gt.astype(t.dtype), zero_ids, gw

    f.defvjp(fwd, bwd)
    return f


def _is_concrete(*xs) -> bool:
    return not any(isinstance(x, jax.core.Tracer) for x in xs)


def _float(name, x, ndim):
    x = jnp.asarray(x) if not isinstance(x, (jax.Array, jax.core.Tracer)) else x
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{name} must be a floating-point array, got dtype {x.dtype}")
    if x.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {tuple(x.shape)}")
    return x


def mns_loss(
    query,
    candidates,
    log_q,
    *,
    temperature=1.0,
    ids=None,
    row_weight=None,
    correct_positive: bool = True,
    positive_offset: int = 0,
    reduction: str = "mean",
    precision: str | None = None,
):
    """The fused MNS loss in JAX, differentiable in ``query`` (B×K),
    ``candidates`` (N×K), ``temperature`` and ``row_weight``; the arguments,
    reductions and ``precision`` are those of ``mixneg.torch.mns_loss`` (on
    the CPU: "f32", or "bf16" where the CPU has AVX512_BF16)."""
    q = _float("query", query, 2)
    c = _float("candidates", candidates, 2)
    lq = _float("log_q", log_q, 1)
    _common.reduction(reduction)
    if precision is None:
        both = q.dtype == c.dtype == jnp.bfloat16
        precision = "bf16" if both and _native.cpu_supports("bf16") else "f32"
    _common.precision(precision)
    if precision != "f32" and not _native.cpu_supports(precision):
        raise ValueError(
            f"precision {precision!r} is not computed by this CPU: mixneg.jax runs the CPU kernels"
            " (f32, and bf16 on a CPU with AVX512_BF16)"
        )
    positive_offset = _common.index("positive_offset", positive_offset, 0)
    b, k = q.shape
    n, kc = c.shape
    t = temperature
    if isinstance(t, (int, float)) and not isinstance(t, bool):
        # At least float32: a Python τ is not rounded to bfloat16 or float16.
        t = jnp.asarray(t, dtype=jnp.promote_types(q.dtype, jnp.float32))
    t = _float("temperature", t, 0) if jnp.ndim(t) == 0 else None
    if t is None:
        raise ValueError("temperature must be a scalar")
    has_ids = ids is not None
    if has_ids:
        ids = jnp.asarray(ids) if not isinstance(ids, (jax.Array, jax.core.Tracer)) else ids
        if not jnp.issubdtype(ids.dtype, jnp.integer):
            raise TypeError(f"ids must be an integer array, got dtype {ids.dtype}")
        if ids.ndim != 1:
            raise ValueError(f"ids must have 1 dimension, got shape {tuple(ids.shape)}")
    else:
        ids = jnp.zeros((0,), jnp.int32)
    has_w = row_weight is not None
    if has_w:
        w = _float("row_weight", row_weight, 1)
    else:
        w = jnp.zeros((0,), q.dtype)
    # Shapes are static under tracing: the crate's checks, with its messages.
    _native.check_shapes(
        b, k, n, kc, positive_offset, lq.shape[0], ids.shape[0] if has_ids else None, w.shape[0] if has_w else None
    )
    if _is_concrete(q, c, lq, t, w):
        # Concrete inputs: the crate's value checks run here, as ValueError
        # with its messages (under jit they run in the callback).
        summary = _common.value_summary(
            np,
            lambda x: np.asarray(x, np.float64),
            np.asarray(q, np.float32),
            np.asarray(c, np.float32),
            np.asarray(lq, np.float32),
            np.asarray(w, np.float32) if has_w else None,
        )
        _native.check_values(b, n, float(t), *summary)
    f = _op(bool(correct_positive), int(positive_offset), reduction, has_ids, has_w, precision)
    return f(q, c, lq, t, ids, w)
