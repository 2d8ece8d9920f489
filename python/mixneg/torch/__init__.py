"""PyTorch front end: ``mns_loss`` with autograd, and the ``MnsLoss`` module.

One module, though over 600 lines: the custom op, its CPU and CUDA kernels,
its fake and autograd registrations and the public wrapper must be
registered together at import, and each reads the others' conventions.

The computation is the custom op ``torch.ops.mixneg.mns_loss`` (registered with
``torch.library.custom_op``, with a fake implementation and an autograd
formula), so ``torch.compile`` graphs containing it work and
``torch.library.opcheck`` passes. Its CPU kernel reads float32 C-contiguous
tensors in place (through NumPy views, no copy) and returns tensors that own
the kernel's output buffers. Its CUDA kernel enqueues the crate's CUDA
backend on torch's current stream of the tensors' device, reading the
inputs and writing freshly allocated output tensors in place (no host round
trip, no copy); the inputs' values are checked on the device first (one
synchronization; ``validate=False`` skips it), with the CPU path's errors.
``precision`` selects the products' arithmetic ("f32": f32-accurate, 3xTF32
on tensor cores; "tf32": CUDA only; "bf16": on CUDA, and on a CPU with
AVX512_BF16; by default "bf16" for bfloat16 embeddings where the device has
it, else "f32"); a tier the device cannot compute raises ValueError. The CPU
kernel reads bfloat16 ``query`` and ``candidates`` in place as well.

Reductions and what backward costs:

* ``"mean"`` (the crate's L = (1/B) Σ w_i ℓ_i) and ``"sum"`` (B·L): when a
  gradient is needed, the forward is one full fused call, which also returns
  ∂L/∂U, ∂L/∂V and ∂L/∂τ; backward only scales them by the upstream scalar
  (an elementwise pass). Without a gradient the forward runs the forward-only
  kernel (a third of the flops).
* ``"none"`` (the vector w_i·ℓ_i): the forward runs the forward-only kernel;
  backward, given the upstream g, is a second fused call with row weights
  w_i·g_i·B (two calls when g has both signs, since the kernels take weights
  ≥ 0): about 1.33 full calls in all.

``log_q`` and ``ids`` take no gradient (``log_q`` must not require one);
``row_weight`` does (∂/∂w_i of the mean is ℓ_i/B).
"""

from __future__ import annotations

from typing import Optional, Union

import numpy as np
import torch
from torch import Tensor

from .. import _common, _native
from .reference import mns_loss_reference

__all__ = ["mns_loss", "MnsLoss", "cuda_unavailable", "mns_loss_reference"]

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _np(t: Optional[Tensor]) -> Optional[np.ndarray]:
    """A NumPy view of a CPU tensor (no copy when it is contiguous); a
    bfloat16 tensor as uint16 bit patterns (NumPy has no bfloat16), which
    the native module reads as bf16."""
    if t is None:
        return None
    t = t.detach().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16)
    return t.numpy()


def _check_f32(name: str, t: Optional[Tensor], bf16: bool = False) -> None:
    """float32 (or, with ``bf16``, bfloat16: the CPU kernels read both)."""
    if t is not None and t.dtype != torch.float32 and not (bf16 and t.dtype == torch.bfloat16):
        also = " or bfloat16" if bf16 else ""
        raise TypeError(f"torch.ops.mixneg: {name} must be float32{also}, got {t.dtype}")


def _check_dtypes(query, candidates, log_q, row_weight, ids, temperature, positive_offset, bf16=False) -> None:
    for name, t in (("query", query), ("candidates", candidates)):
        _check_f32(name, t, bf16)
    for name, t in (("log_q", log_q), ("row_weight", row_weight)):
        _check_f32(name, t)
    if ids is not None and ids.dtype != torch.int64:
        raise TypeError(f"torch.ops.mixneg: ids must be int64, got {ids.dtype}")
    if temperature.numel() != 1:
        raise ValueError(f"temperature must hold one value, got shape {tuple(temperature.shape)}")
    if positive_offset < 0:
        raise ValueError(f"positive_offset must be at least 0, got {positive_offset}")


def _call(
    query, candidates, log_q, temperature, ids, row_weight, correct_positive, positive_offset, threads, grad, precision
):
    """The fused call on CPU tensors: a dict of tensors (loss, lse, row_loss,
    top1 and, with ``grad``, d_u, d_v, d_temperature; float32). ``query`` and
    ``candidates`` may be bfloat16: read in place too."""
    _check_dtypes(query, candidates, log_q, row_weight, ids, temperature, positive_offset, bf16=True)
    r = _native.mns_loss(
        _np(query),
        _np(candidates),
        _np(log_q),
        temperature=float(temperature.item()),
        ids=_np(ids),
        row_weight=_np(row_weight),
        correct_positive=correct_positive,
        positive_offset=positive_offset,
        # 0: torch's intra-op thread count, read here at run time (inside the
        # opaque op, so that compiled graphs follow torch.set_num_threads).
        threads=threads if threads > 0 else torch.get_num_threads(),
        grad=grad,
        precision=precision,
    )
    out = {"loss": torch.tensor(r["loss"], dtype=torch.float32), "row_loss": torch.from_numpy(r["row_loss"])}
    if grad:
        out["d_u"] = torch.from_numpy(r["d_u"])
        out["d_v"] = torch.from_numpy(r["d_v"])
        out["d_temperature"] = torch.tensor(r["d_temperature"], dtype=torch.float32)
    return out


_NVRTC_TRIED = False


def cuda_unavailable() -> Optional[str]:
    """None when mixneg's CUDA backend can run in this process, else why not.
    NVRTC 13 is looked up on the loader's path and, failing that, in the
    ``nvidia`` wheels next to PyTorch (``nvidia-cuda-nvrtc``)."""
    global _NVRTC_TRIED
    why = _native.cuda_unavailable()
    if why is not None and "NVRTC" in why and not _NVRTC_TRIED:
        _NVRTC_TRIED = True
        import ctypes
        import importlib.util
        from pathlib import Path

        spec = importlib.util.find_spec("nvidia")
        for root in (spec.submodule_search_locations or []) if spec is not None else []:
            for lib in sorted(Path(root).glob("**/libnvrtc.so.13")):
                try:
                    # Loaded globally, so that the backend's dlopen of
                    # libnvrtc.so.13 finds it by its soname.
                    ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
                    break
                except OSError:
                    continue
        why = _native.cuda_unavailable()
    return why


def _check_device_values(query, candidates, log_q, row_weight, temperature: float) -> None:
    """The CPU path's value checks (finite inputs, weights ≥ 0, no overflow
    of the kernels' f32 intermediates) on CUDA tensors: reduced on the
    device, brought to the host in one transfer, judged by the crate."""
    summary = _common.value_summary(torch, lambda x: x.to(torch.float64), query, candidates, log_q, row_weight)
    _native.check_values(query.shape[0], candidates.shape[0], temperature, *summary)


def _call_cuda(
    query, candidates, log_q, temperature, ids, row_weight, correct_positive, positive_offset, grad, precision, validate
):
    """The fused call on CUDA tensors of one device, on its current stream:
    the same dict as ``_call``, every tensor on that device."""
    _check_dtypes(query, candidates, log_q, row_weight, ids, temperature, positive_offset)
    why = cuda_unavailable()
    if why is not None:
        raise RuntimeError(f"mixneg: CUDA tensors given, but the CUDA backend cannot run: {why}")
    dev = query.device
    tau = float(temperature.item())
    if validate:
        _check_device_values(query, candidates, log_q, row_weight, tau)
    b, k = query.shape
    n = candidates.shape[0]
    f32 = torch.float32
    out = {
        "loss": torch.empty((1,), dtype=f32, device=dev),
        "lse": torch.empty((b,), dtype=f32, device=dev),
        "row_loss": torch.empty((b,), dtype=f32, device=dev),
        "top1": torch.empty((b,), dtype=torch.int32, device=dev),
    }
    if grad:
        out["d_u"] = torch.empty((b, k), dtype=f32, device=dev)
        out["d_v"] = torch.empty((n, k), dtype=f32, device=dev)
        out["d_temperature"] = torch.empty((1,), dtype=f32, device=dev)
    ptr = lambda t: 0 if t is None else t.data_ptr()  # noqa: E731
    _native.mns_loss_cuda(
        dev.index,
        torch.cuda.current_stream(dev).cuda_stream,
        query.data_ptr(),
        candidates.data_ptr(),
        log_q.data_ptr(),
        ptr(ids),
        ptr(row_weight),
        b,
        n,
        k,
        temperature=tau,
        correct_positive=correct_positive,
        positive_offset=positive_offset,
        precision=precision,
        loss=out["loss"].data_ptr(),
        lse=out["lse"].data_ptr(),
        row_loss=out["row_loss"].data_ptr(),
        top1=out["top1"].data_ptr(),
        d_u=ptr(out.get("d_u")),
        d_v=ptr(out.get("d_v")),
        d_temperature=ptr(out.get("d_temperature")),
    )
    out["loss"] = out["loss"].reshape(())
    if grad:
        out["d_temperature"] = out["d_temperature"].reshape(())
    return out


def _run(args, *, threads: int, grad: bool, precision: str, validate: bool):
    """The fused call on ``args`` = (query, candidates, log_q, temperature,
    ids, row_weight, correct_positive, positive_offset), on the device the
    tensors are on."""
    _common.precision(precision)
    if args[0].device.type == "cuda":
        return _call_cuda(*args, grad, precision, validate)
    return _call(*args, threads, grad, precision)


@torch.library.custom_op("mixneg::mns_loss", mutates_args=(), device_types=("cpu", "cuda"))
def _mns_loss_op(
    query: Tensor,
    candidates: Tensor,
    log_q: Tensor,
    temperature: Tensor,
    ids: Optional[Tensor],
    row_weight: Optional[Tensor],
    correct_positive: bool,
    positive_offset: int,
    reduction: str,
    need_grad: bool,
    threads: int,
    precision: str = "f32",
    validate: bool = True,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(loss, row_loss, ∂L/∂U, ∂L/∂V, ∂L/∂τ) of the mean loss L. ``loss`` is
    reduced as ``reduction`` says; ``row_loss`` is the unweighted ℓ; the three
    gradients are those of the mean L when ``need_grad`` and the reduction is
    not "none", else empty (shape (0,), and ∂L/∂τ = 0)."""
    _common.reduction(reduction)
    grad = need_grad and reduction != "none"
    args = (query, candidates, log_q, temperature, ids, row_weight, correct_positive, positive_offset)
    r = _run(args, threads=threads, grad=grad, precision=precision, validate=validate)
    row_loss = r["row_loss"]
    b = query.shape[0]
    if reduction == "mean":
        loss = r["loss"]
    elif reduction == "sum":
        loss = r["loss"] * b
    else:
        loss = row_loss * row_weight if row_weight is not None else row_loss.clone()
    if grad:
        du, dv, dt = r["d_u"], r["d_v"], r["d_temperature"]
    else:
        du = query.new_empty((0,), dtype=torch.float32)
        dv = candidates.new_empty((0,), dtype=torch.float32)
        dt = query.new_zeros((), dtype=torch.float32)
    return loss, row_loss, du, dv, dt


@_mns_loss_op.register_fake
def _(
    query,
    candidates,
    log_q,
    temperature,
    ids,
    row_weight,
    correct_positive,
    positive_offset,
    reduction,
    need_grad,
    threads,
    precision="f32",
    validate=True,
):
    b, k = query.shape
    n = candidates.shape[0]
    grad = need_grad and reduction != "none"
    f32 = torch.float32
    loss = query.new_empty((b,) if reduction == "none" else (), dtype=f32)
    return (
        loss,
        query.new_empty((b,), dtype=f32),
        query.new_empty((b, k) if grad else (0,), dtype=f32),
        candidates.new_empty((n, k) if grad else (0,), dtype=f32),
        query.new_empty((), dtype=f32),
    )


@torch.library.custom_op("mixneg::mns_loss_backward", mutates_args=(), device_types=("cpu", "cuda"))
def _mns_backward_op(
    query: Tensor,
    candidates: Tensor,
    log_q: Tensor,
    temperature: Tensor,
    ids: Optional[Tensor],
    coef: Tensor,
    correct_positive: bool,
    positive_offset: int,
    threads: int,
    precision: str = "f32",
    validate: bool = True,
) -> tuple[Tensor, Tensor, Tensor]:
    """∂/∂(U, V, τ) of Σ_i coef_i·ℓ_i, for any real coef (B): the fused
    gradient with row weights B·coef, split into its positive and negative
    parts (the kernels take weights ≥ 0)."""
    b = query.shape[0]
    c = coef.detach().to(torch.float64) * b
    du = torch.zeros(query.shape, dtype=torch.float32, device=query.device)
    dv = torch.zeros(candidates.shape, dtype=torch.float32, device=candidates.device)
    dt = torch.zeros((), dtype=torch.float32, device=query.device)
    for sign, part in _common.signed_parts(c):
        w = part.to(torch.float32)
        args = (query, candidates, log_q, temperature, ids, w, correct_positive, positive_offset)
        r = _run(args, threads=threads, grad=True, precision=precision, validate=validate)
        du += sign * r["d_u"]
        dv += sign * r["d_v"]
        dt += sign * r["d_temperature"]
    return du, dv, dt


@_mns_backward_op.register_fake
def _(
    query,
    candidates,
    log_q,
    temperature,
    ids,
    coef,
    correct_positive,
    positive_offset,
    threads,
    precision="f32",
    validate=True,
):
    f32 = torch.float32
    return torch.empty_like(query, dtype=f32), torch.empty_like(candidates, dtype=f32), query.new_empty((), dtype=f32)


def _setup_context(ctx, inputs, output):
    (query, candidates, log_q, temperature, ids, row_weight, cp, offset, reduction, need_grad, threads, prec, val) = (
        inputs
    )
    loss, row_loss, du, dv, dt = output
    ctx.mark_non_differentiable(row_loss, du, dv, dt)
    # Only the loss is differentiable: without this, autograd would hand the
    # backward zeros shaped like dU and dV (B×K + N×K floats at the peak).
    ctx.set_materialize_grads(False)
    ctx.options = (cp, offset, reduction, need_grad, threads, prec, val)
    ctx.b = query.shape[0]
    if reduction == "none":
        ctx.save_for_backward(query, candidates, log_q, temperature, ids, row_weight, row_loss)
    else:
        ctx.save_for_backward(du, dv, dt, row_loss)


def _is_one(scale: Tensor) -> bool:
    """Whether ``scale`` is an eager CPU tensor holding exactly 1 (no device
    synchronization, and never while tracing)."""
    return (
        type(scale) is Tensor
        and scale.device.type == "cpu"
        and scale.numel() == 1
        and not torch.compiler.is_compiling()
        and scale.item() == 1.0
    )


def _backward(ctx, g_loss, g_row_loss, g_du, g_dv, g_dt):
    cp, offset, reduction, need_grad, threads, precision, validate = ctx.options
    if g_loss is None:
        # No gradient reached the loss (grads are not materialized).
        return (None,) * 13
    need_u, need_v, _, need_t, _, need_w = ctx.needs_input_grad[:6]
    gq = gc = gt = gw = None
    if reduction == "none":
        query, candidates, log_q, temperature, ids, row_weight, row_loss = ctx.saved_tensors
        if need_u or need_v or need_t:
            coef = g_loss if row_weight is None else g_loss * row_weight
            gq, gc, gt = torch.ops.mixneg.mns_loss_backward(
                query, candidates, log_q, temperature, ids, coef, cp, offset, threads, precision, validate
            )
            gt = gt.reshape(temperature.shape)
        if need_w:
            gw = g_loss * row_loss
    else:
        du, dv, dt, row_loss = ctx.saved_tensors
        if (need_u or need_v or need_t) and not need_grad:
            raise RuntimeError("mixneg::mns_loss was called with need_grad=False; no gradient was computed")
        scale = g_loss * ctx.b if reduction == "sum" else g_loss
        if _is_one(scale):
            # loss.backward(): the saved gradients are the answer. Handed on
            # without a copy (B×K + N×K floats less at the peak); autograd
            # copies them only if the graph is kept (its saved references
            # then remain), before anything could modify them in place.
            gq, gc = du if need_u else None, dv if need_v else None
        else:
            gq = du * scale if need_u else None
            gc = dv * scale if need_v else None
        if need_t:
            gt = dt * scale
        if need_w:
            gw = row_loss * (scale / ctx.b)
    return gq, gc, None, gt, None, gw, None, None, None, None, None, None, None


torch.library.register_autograd("mixneg::mns_loss", _backward, setup_context=_setup_context)


def _tensor(name: str, x, ndim: int) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _FLOATS:
        raise TypeError(
            f"{name} must be a floating-point tensor (float32, float64, bfloat16 or float16), got {x.dtype}"
        )
    if x.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {tuple(x.shape)}")
    return x


def _default_precision(query: Tensor, candidates: Tensor) -> str:
    """The tier of ``precision=None``: "bf16" for bfloat16 embeddings on a
    device that computes it, else "f32"."""
    both = query.dtype == candidates.dtype == torch.bfloat16
    return "bf16" if both and (query.device.type == "cuda" or _native.cpu_supports("bf16")) else "f32"


def _same_device(named) -> torch.device:
    first_name, first = named[0]
    for name, t in named[1:]:
        if t is not None and t.device != first.device:
            raise ValueError(
                f"{first_name} is on {first.device} but {name} is on {t.device}: all tensors must be on one device"
            )
    if first.device.type not in ("cpu", "cuda"):
        raise ValueError(
            f"{first_name} is on {first.device}: mixneg runs on CPU and CUDA tensors; move the tensors to one of them"
        )
    return first.device


def mns_loss(
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
    precision: Optional[str] = None,
    validate: bool = True,
) -> Tensor:
    """The fused MNS loss of ``query`` (B×K) against ``candidates`` (N×K) with
    autograd to ``query``, ``candidates``, ``row_weight`` and ``temperature``
    (when it is a tensor that requires grad).

    Row i + ``positive_offset`` of ``candidates`` is query i's positive;
    ``log_q`` (N) is subtracted from every logit (from the positive's too when
    ``correct_positive``); ``ids`` (N, integer) remove accidental hits;
    ``row_weight`` (B, ≥ 0) weighs the rows. ``reduction``: "mean" (L =
    (1/B) Σ w_i ℓ_i), "sum" (B·L) or "none" (the vector w_i ℓ_i). float32
    tensors are read in place, and on the CPU bfloat16 ``query`` and
    ``candidates`` too; other dtypes are computed from a float32 copy. The
    gradients are returned in the inputs' dtypes; the loss has the promoted
    dtype of ``query`` and ``candidates``. Bad input raises ValueError or
    TypeError.

    The tensors may be on the CPU or on one CUDA device (all on the same
    one): on CUDA the call runs on torch's current stream. ``precision``:
    "f32" (f32-accurate, 3xTF32 on tensor cores), "tf32" (CUDA only) or
    "bf16" (CUDA, or a CPU with AVX512_BF16): the products' factors rounded
    to TF32 or bf16, f32 accumulation. The default, None, is "bf16" when
    ``query`` and ``candidates`` are both bfloat16 and the device computes
    that tier, else "f32". ``validate=False`` skips the CUDA path's device-side
    check of the values (and its synchronization); non-finite inputs then
    give undefined results.
    """
    query = _tensor("query", query, 2)
    candidates = _tensor("candidates", candidates, 2)
    log_q = _tensor("log_q", log_q, 1)
    if row_weight is not None:
        row_weight = _tensor("row_weight", row_weight, 1)
    if ids is not None:
        if not isinstance(ids, Tensor):
            raise TypeError(f"ids must be a torch.Tensor, got {type(ids).__name__}")
        if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
            raise TypeError(f"ids must be an integer tensor, got {ids.dtype}")
        if ids.dim() != 1:
            raise ValueError(f"ids must have 1 dimension, got shape {tuple(ids.shape)}")
    _common.reduction(reduction)
    if precision is None:
        precision = _default_precision(query, candidates)
    _common.precision(precision)
    positive_offset = _common.index("positive_offset", positive_offset, 0)
    if isinstance(temperature, Tensor):
        if temperature.dtype not in _FLOATS:
            raise TypeError(f"temperature must be a floating-point tensor, got {temperature.dtype}")
        if temperature.numel() != 1:
            raise ValueError(f"temperature must hold one value, got shape {tuple(temperature.shape)}")
        t = temperature.reshape(()).to(torch.float32)
    elif isinstance(temperature, (int, float)) and not isinstance(temperature, bool):
        # A CPU scalar also on CUDA: reading it costs no synchronization.
        t = torch.tensor(float(temperature), dtype=torch.float32)
    else:
        raise TypeError(f"temperature must be a float or a tensor, got {type(temperature).__name__}")
    _same_device(
        [
            ("query", query),
            ("candidates", candidates),
            ("log_q", log_q),
            ("ids", ids),
            ("row_weight", row_weight),
            ("temperature", temperature if isinstance(temperature, Tensor) else None),
        ]
    )
    if log_q.requires_grad:
        raise ValueError("log_q must not require grad: the loss is not differentiated with respect to it (detach it)")
    out_dtype = torch.promote_types(query.dtype, candidates.dtype)
    need_grad = torch.is_grad_enabled() and (
        query.requires_grad or candidates.requires_grad or (isinstance(temperature, Tensor) and t.requires_grad)
    )
    f32 = torch.float32
    # The CPU kernels read float32 and bfloat16 embeddings in place (bf16 at
    # the F32 tier: converted inside, exactly); everything else, and every
    # dtype but float32 on CUDA, goes through a float32 copy.
    in_place = (f32, torch.bfloat16) if query.device.type == "cpu" else (f32,)

    def embeddings(t: Tensor) -> Tensor:
        return (t if t.dtype in in_place else t.to(f32)).contiguous()

    loss, _, _, _, _ = torch.ops.mixneg.mns_loss(
        embeddings(query),
        embeddings(candidates),
        log_q.to(f32).contiguous(),
        t,
        None if ids is None else ids.to(torch.int64).contiguous(),
        None if row_weight is None else row_weight.to(f32).contiguous(),
        bool(correct_positive),
        positive_offset,
        reduction,
        need_grad,
        0,
        precision,
        bool(validate),
    )
    return loss.to(out_dtype)


class MnsLoss(torch.nn.Module):
    """``mns_loss`` as a module. ``temperature`` is a float, or a tensor / an
    ``nn.Parameter`` to learn it; the other options are fixed at construction.
    ``forward(query, candidates, log_q, ids=None, row_weight=None,
    positive_offset=0)``."""

    def __init__(
        self,
        temperature: Union[float, Tensor] = 1.0,
        *,
        correct_positive: bool = True,
        reduction: str = "mean",
        precision: Optional[str] = None,
        validate: bool = True,
    ):
        super().__init__()
        _common.reduction(reduction)
        if precision is not None:
            _common.precision(precision)
        self.temperature = temperature
        self.correct_positive = correct_positive
        self.reduction = reduction
        self.precision = precision
        self.validate = validate

    def forward(self, query, candidates, log_q, ids=None, row_weight=None, positive_offset: int = 0) -> Tensor:
        return mns_loss(
            query,
            candidates,
            log_q,
            temperature=self.temperature,
            ids=ids,
            row_weight=row_weight,
            correct_positive=self.correct_positive,
            positive_offset=positive_offset,
            reduction=self.reduction,
            precision=self.precision,
            validate=self.validate,
        )

    def extra_repr(self) -> str:
        t = self.temperature
        t = f"{float(t):g}" if not isinstance(t, Tensor) else f"tensor({float(t.detach().reshape(-1)[0]):g})"
        return (
            f"temperature={t}, correct_positive={self.correct_positive}, reduction={self.reduction!r}, "
            f"precision={self.precision!r}"
        )
