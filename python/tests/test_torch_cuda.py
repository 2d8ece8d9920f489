"""mixneg.torch on CUDA tensors: the crate's CUDA backend on torch's current
stream, against the float64 reference of conftest.py (every reduction,
offsets at both ends, ids, weights; each precision tier), writing its
results into torch's memory with the inputs untouched; the CPU path's
errors; opcheck and a torch.compile graph on CUDA.

Without a CUDA device every test is skipped with the reason `skipping: no
CUDA device`; REQUIRE_GPU=1 (set by the GPU check) makes that a failure."""

import math
import os

import pytest
import torch
from conftest import CASES, assert_close_grad, assert_close_loss, case_id, reference

import mixneg.torch as mt


@pytest.fixture
def dev():
    why = None
    if not torch.cuda.is_available():
        why = "no CUDA device"
    elif mt.cuda_unavailable() is not None:
        why = f"mixneg's CUDA backend cannot run: {mt.cuda_unavailable()}"
    if why is not None:
        if os.environ.get("REQUIRE_GPU") == "1":
            pytest.fail(f"REQUIRE_GPU=1 but {why}")
        pytest.skip(f"skipping: {why}")
    return torch.device("cuda", torch.cuda.current_device())


def _inputs(c, dev, dtype=torch.float32):
    u, v, log_q, ids, w = c.arrays()
    cuda = lambda t: None if t is None else t.to(dev)  # noqa: E731
    return (u.to(dtype), v.to(dtype), log_q), (cuda(u.to(dtype)), cuda(v.to(dtype)), cuda(log_q), cuda(ids), cuda(w))


def _f32(t):
    return None if t is None else t.float()


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("c", CASES, ids=case_id)
def test_cuda_against_reference(dev, c, reduction):
    (u_h, v_h, lq_h), (u, v, log_q, ids, w) = _inputs(c, dev)
    u, v = u.requires_grad_(), v.requires_grad_()
    t = torch.tensor(c.temperature, dtype=torch.float32, device=dev, requires_grad=True)
    kw = dict(correct_positive=c.correct_positive, positive_offset=c.offset, reduction=reduction)
    got = mt.mns_loss(u, v, log_q, temperature=t, ids=ids, row_weight=w, **kw)
    assert got.device == dev
    u64, v64 = u_h.double().requires_grad_(), v_h.double().requires_grad_()
    t64 = torch.tensor(c.temperature, dtype=torch.float64, requires_grad=True)
    want = reference(
        u64,
        v64,
        lq_h,
        t64,
        ids=None if ids is None else ids.cpu(),
        row_weight=None if w is None else w.cpu(),
        correct_positive=c.correct_positive,
        offset=c.offset,
        reduction=reduction,
    )
    g = torch.randn(want.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(c.seed))
    (got * g.to(dev, got.dtype)).sum().backward()
    (want * g).sum().backward()
    assert_close_loss(got.detach().cpu().double(), want.detach())
    assert_close_grad("d_query", u.grad.cpu().double(), u64.grad)
    assert_close_grad("d_candidates", v.grad.cpu().double(), v64.grad)
    assert t.grad is not None and t.grad.device == dev


# Unit roundoff of each lower tier's factors.
TIER_U = {"tf32": 2.0**-11, "bf16": 2.0**-8}


def _tier_bounds(precision, u, v, tau, loss):
    """(loss, gradient) relative bounds of a tier on this case. F32: the
    crate's bar (1e-6, 1e-5). TF32/bf16 round each factor by u, so a logit
    errs by at most δ = 2u·S, S = max_ij Σ_k |u_ik v_jk| / τ; ℓ = lse − s_ii
    moves by at most 2δ; P_ij by a factor within e^{±2δ}, ~4δ on the
    gradient with the second product's own rounding (2u) on top. Twice
    these, as the tolerance policy allows a plain implementation's error
    twice (docs/testing.md)."""
    if precision == "f32":
        return 1e-6, 1e-5
    ur = TIER_U[precision]
    delta = 2 * ur * float((u.abs() @ v.abs().T).max()) / tau
    return 2 * 2 * delta / abs(loss), 2 * (4 * delta + 2 * ur)


@pytest.mark.parametrize("precision", ["f32", "tf32", "bf16"])
def test_cuda_precision_tiers(dev, precision):
    c = CASES[16]
    (u_h, v_h, lq_h), (u, v, log_q, ids, w) = _inputs(c, dev)
    u.requires_grad_()
    got = mt.mns_loss(u, v, log_q, temperature=c.temperature, ids=ids, positive_offset=c.offset, precision=precision)
    got.backward()
    u64 = u_h.double().requires_grad_()
    want = reference(u64, v_h.double(), lq_h, c.temperature, ids=None if ids is None else ids.cpu(), offset=c.offset)
    want.backward()
    loss_rtol, grad_rtol = _tier_bounds(precision, u_h.double(), v_h.double(), c.temperature, float(want))
    assert abs(float(got) - float(want)) <= loss_rtol * abs(float(want)) + 1e-7, (precision, float(got), float(want))
    err = float((u.grad.cpu().double() - u64.grad).norm() / u64.grad.norm())
    assert err <= grad_rtol, (precision, err, grad_rtol)


def test_cuda_results_live_in_torch_memory_inputs_untouched(dev):
    c = CASES[13]
    _, (u, v, log_q, ids, w) = _inputs(c, dev)
    log_q, w = _f32(log_q), _f32(w)  # the raw op takes float32 only
    before = [x.clone() for x in (u, v, log_q)]
    r = torch.ops.mixneg.mns_loss(
        u, v, log_q, torch.tensor(c.temperature), ids, w, True, c.offset, "mean", True, 0, "f32", True
    )
    for x in r:
        assert x.device == dev
    for x, y in zip((u, v, log_q), before):
        assert torch.equal(x, y)


def test_cuda_runs_on_the_current_stream(dev):
    c = CASES[14]
    _, (u, v, log_q, ids, w) = _inputs(c, dev)
    base = mt.mns_loss(u, v, log_q, temperature=c.temperature, ids=ids)
    s = torch.cuda.Stream(dev)
    s.wait_stream(torch.cuda.current_stream(dev))
    with torch.cuda.stream(s):
        on_s = mt.mns_loss(u, v, log_q, temperature=c.temperature, ids=ids)
    torch.cuda.current_stream(dev).wait_stream(s)
    assert torch.equal(base, on_s)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_cuda_low_precision_tensors(dev, dtype):
    c = CASES[12]
    _, (u, v, log_q, ids, w) = _inputs(c, dev, dtype)
    u.requires_grad_()
    loss = mt.mns_loss(u, v, log_q, temperature=c.temperature)
    loss.backward()
    assert loss.dtype == dtype and u.grad.dtype == dtype and torch.isfinite(u.grad.float()).all()


def test_cuda_errors_match_the_cpu_path(dev):
    c = CASES[12]
    (u_h, v_h, lq_h), (u, v, log_q, ids, w) = _inputs(c, dev)
    bad = u.clone()
    bad[0, 0] = math.nan
    with pytest.raises(ValueError, match=r"u\[0\] = NaN is not finite"):
        mt.mns_loss(bad, v, log_q)
    with pytest.raises(ValueError, match="all tensors must be on one device"):
        mt.mns_loss(u, v_h.float(), log_q)
    with pytest.raises(ValueError, match="too large for f32"):
        mt.mns_loss(u * 1e30, v * 1e30, log_q)
    with pytest.raises(ValueError, match="is negative"):
        mt.mns_loss(u, v, log_q, row_weight=-torch.ones(u.shape[0], device=dev))


def test_cuda_opcheck_and_compile(dev):
    c = CASES[13]
    _, (u, v, log_q, ids, w) = _inputs(c, dev)
    log_q, w = _f32(log_q), _f32(w)  # the raw op takes float32 only
    u.requires_grad_()
    v.requires_grad_()
    args = (u, v, log_q, torch.tensor(c.temperature), ids, w, True, c.offset, "mean", True, 0, "f32", True)
    torch.library.opcheck(torch.ops.mixneg.mns_loss.default, args)

    def f(u, v):
        return mt.mns_loss(u, v, log_q, temperature=c.temperature, ids=ids, positive_offset=c.offset)

    eager = f(u, v)
    compiled = torch.compile(f, fullgraph=True)(u, v)
    assert torch.equal(eager, compiled)
