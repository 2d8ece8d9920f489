"""mixneg.torch against the float64 reference of conftest.py: every
reduction, both diagonal conventions, offsets at both ends, ids with
duplicates, weights with zeros, every dtype, non-contiguous inputs; the
custom op under opcheck and torch.compile."""

import pytest
import torch
from conftest import CASES, assert_close_grad, assert_close_loss, case_id, reference

import mixneg.torch as mt


def _run(c, reduction, dtype=torch.float64, learn_t=True):
    u, v, log_q, ids, w = c.arrays()
    u, v = u.to(dtype), v.to(dtype)
    # The reference sees exactly the values the kernels see.
    u64, v64 = u.to(torch.float64).requires_grad_(), v.to(torch.float64).requires_grad_()
    u, v = u.requires_grad_(), v.requires_grad_()
    t = torch.tensor(c.temperature, dtype=torch.float64, requires_grad=True) if learn_t else c.temperature
    t64 = torch.tensor(c.temperature, dtype=torch.float64, requires_grad=True)
    kw = dict(ids=ids, row_weight=w, correct_positive=c.correct_positive)
    got = mt.mns_loss(u, v, log_q, temperature=t, positive_offset=c.offset, reduction=reduction, **kw)
    want = reference(u64, v64, log_q, t64, offset=c.offset, reduction=reduction, **kw)
    g = torch.randn(want.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(c.seed))
    (got * g.to(got.dtype)).sum().backward()
    (want * g).sum().backward()
    return got, want, (u, v, t), (u64, v64, t64)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_against_reference(case, reduction):
    got, want, (u, v, t), (u64, v64, t64) = _run(case, reduction)
    assert got.dtype == torch.float64 and got.shape == want.shape
    assert_close_loss(got.detach(), want.detach())
    assert u.grad.dtype == torch.float64 and v.grad.dtype == torch.float64
    assert_close_grad("d_query", u.grad, u64.grad)
    assert_close_grad("d_candidates", v.grad, v64.grad)
    assert_close_dtemperature(t.grad, t64.grad, u64, case.temperature)


def assert_close_dtemperature(got, want, u64, tau):
    """∂L/∂τ = −⟨U, ∂L/∂U⟩/τ is a sum that cancels (|∂L/∂τ| can be 1e-4 of
    its terms), so its error is bounded through the gradient's:
    |Δ| ≤ |U|·|Δ ∂L/∂U|/τ ≤ 1e-5·|U|·|∂L/∂U|/τ (Cauchy–Schwarz), plus the
    rounding of the result to f32 (the kernels sum the dot product in f64)."""
    scale = float(u64.detach().norm() * u64.grad.norm()) / tau
    bound = 1e-5 * scale + 2.0**-24 * abs(float(want)) + 1e-12
    err = abs(float(got) - float(want))
    assert err <= bound, f"d_temperature: |Δ| = {err:.3e} > {bound:.3e} (ref {float(want):.3e})"


# A tensor rounded to a dtype with unit roundoff u has normwise relative
# error ≤ u; the f32 computation adds the bar's 1e-5 (gradients) / 1e-6 (loss).
UNIT_ROUNDOFF = {torch.float32: 2.0**-24, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("c", [CASES[12], CASES[15], CASES[18]], ids=case_id)
def test_dtypes(c, dtype):
    got, want, (u, v, _), (u64, v64, _) = _run(c, "mean", dtype=dtype, learn_t=False)
    ur = UNIT_ROUNDOFF[dtype]
    assert got.dtype == dtype and u.grad.dtype == dtype and v.grad.dtype == dtype
    assert_close_loss(got.detach(), want.detach(), rtol=1e-6 + ur)
    assert_close_grad("d_query", u.grad, u64.grad, rtol=1e-5 + ur)
    assert_close_grad("d_candidates", v.grad, v64.grad, rtol=1e-5 + ur)


def test_noncontiguous_and_float32_inputs():
    c = CASES[16]
    u, v, log_q, ids, w = c.arrays()
    # Column-major views and a strided log_q: the wrapper makes them contiguous.
    ut = u.to(torch.float32).T.contiguous().T.requires_grad_()
    vt = v.to(torch.float32).T.contiguous().T.requires_grad_()
    assert not ut.is_contiguous() and not vt.is_contiguous()
    lq2 = torch.stack([log_q, log_q], 1).to(torch.float32)[:, 0]
    assert not lq2.is_contiguous()
    loss = mt.mns_loss(ut, vt, lq2, temperature=c.temperature, ids=ids, positive_offset=c.offset)
    loss.backward()
    u64, v64 = ut.detach().double().requires_grad_(), vt.detach().double().requires_grad_()
    want = reference(u64, v64, lq2.double(), c.temperature, ids=ids, offset=c.offset)
    want.backward()
    assert loss.dtype == torch.float32
    assert_close_loss(loss.detach(), want.detach())
    assert_close_grad("d_query", ut.grad, u64.grad)
    assert_close_grad("d_candidates", vt.grad, v64.grad)


def test_row_weight_gradient():
    c = CASES[10]
    u, v, log_q, ids, _ = c.arrays()
    w = torch.rand(c.b, dtype=torch.float64, requires_grad=True)
    w64 = w.detach().clone().requires_grad_()
    for reduction in ("mean", "sum", "none"):
        w.grad = w64.grad = None
        got = mt.mns_loss(u, v, log_q, temperature=c.temperature, ids=ids, row_weight=w, reduction=reduction)
        want = reference(u, v, log_q, c.temperature, ids=ids, row_weight=w64, reduction=reduction)
        got.sum().backward()
        want.sum().backward()
        assert_close_grad(f"d_row_weight ({reduction})", w.grad, w64.grad)


def test_no_grad_forward_matches():
    """Without autograd the op runs the forward-only kernel: same loss bits."""
    c = CASES[14]
    u, v, log_q, ids, w = c.arrays()
    u, v = u.float(), v.float()
    with torch.no_grad():
        a = mt.mns_loss(u, v, log_q, temperature=0.1, ids=ids, row_weight=w)
    b = mt.mns_loss(u.requires_grad_(), v, log_q, temperature=0.1, ids=ids, row_weight=w)
    assert torch.equal(a, b.detach())


def test_inputs_not_modified():
    c = CASES[12]
    u, v, log_q, ids, w = c.arrays()
    args = [x.float() if x is not None and x.is_floating_point() else x for x in (u, v, log_q, ids, w)]
    copies = [None if x is None else x.clone() for x in args]
    u32 = args[0].requires_grad_()
    mt.mns_loss(u32, args[1], args[2], ids=args[3], row_weight=args[4], reduction="none").sum().backward()
    for x, y in zip(args, copies):
        if x is not None:
            assert torch.equal(x.detach(), y)


def _op_args(c, reduction, need_grad):
    u, v, log_q, ids, w = c.arrays()
    return (
        u.float().requires_grad_(need_grad),
        v.float().requires_grad_(need_grad),
        log_q.float(),
        torch.tensor(c.temperature, requires_grad=need_grad),
        ids,
        None if w is None else w.float(),
        c.correct_positive,
        c.offset,
        reduction,
        need_grad,
        2,
    )


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("c", [CASES[0], CASES[9], CASES[15]], ids=case_id)
def test_opcheck(c, reduction):
    torch.library.opcheck(torch.ops.mixneg.mns_loss.default, _op_args(c, reduction, True))
    torch.library.opcheck(torch.ops.mixneg.mns_loss.default, _op_args(c, reduction, False))


def test_opcheck_backward_op():
    c = CASES[9]
    u, v, log_q, ids, _ = c.arrays()
    coef = torch.randn(c.b)
    args = (u.float(), v.float(), log_q.float(), torch.tensor(0.5), ids, coef, True, c.offset, 2)
    torch.library.opcheck(torch.ops.mixneg.mns_loss_backward.default, args)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_torch_compile(reduction):
    """A compiled graph around the op gives the eager results, forward and
    backward (the op itself is opaque to the compiler; inductor's own fusion
    of the projection reorders float64 arithmetic, hence not bit for bit)."""
    c = CASES[16]
    u, v, log_q, ids, w = c.arrays()
    proj = torch.nn.Linear(c.k, c.k).double()

    def step(u, v):
        q = torch.tanh(proj(u))
        loss = mt.mns_loss(q, v, log_q, temperature=0.1, ids=ids, row_weight=w, reduction=reduction)
        return loss.sum()

    compiled = torch.compile(step, fullgraph=True)
    res = []
    for f in (step, compiled):
        uu, vv = u.clone().requires_grad_(), v.clone().requires_grad_()
        proj.zero_grad()
        loss = f(uu, vv)
        loss.backward()
        res.append((loss.detach(), uu.grad, vv.grad, proj.weight.grad.clone()))
    for a, b in zip(*res):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)


def test_module():
    c = CASES[13]
    u, v, log_q, ids, w = c.arrays()
    t = torch.nn.Parameter(torch.tensor(0.2, dtype=torch.float64))
    m = mt.MnsLoss(t, correct_positive=False)
    assert any(p is t for p in m.parameters())
    loss = m(u, v, log_q, ids=ids, row_weight=w, positive_offset=c.offset)
    loss.backward()
    t64 = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)
    want = reference(u, v, log_q, t64, ids=ids, row_weight=w, correct_positive=False, offset=c.offset)
    want.backward()
    assert_close_loss(loss.detach(), want.detach())
    assert_close_grad("d_temperature", t.grad.reshape(1), t64.grad.reshape(1))
    assert "reduction='mean'" in repr(m)


def test_cpu_tiers():
    """precision= reaches the crate: the CPU kernels refuse TF32 (a
    tensor-core format) with the crate's message, and bf16 where this CPU
    lacks AVX512_BF16; where it has it, bf16 is the f32 result within bf16's
    error; an unknown tier is a ValueError before any call."""
    c = CASES[12]
    u, v, log_q, ids, w = c.arrays()
    u, v, log_q = u.float(), v.float(), log_q.float()
    with pytest.raises(ValueError, match="cannot compute Precision::Tf32: TF32 is a tensor-core format"):
        mt.mns_loss(u, v, log_q, temperature=c.temperature, precision="tf32")
    assert not mt._native.cpu_supports("tf32") and mt._native.cpu_supports("f32")
    try:
        bf16 = mt.mns_loss(u, v, log_q, temperature=c.temperature, precision="bf16")
    except ValueError as e:
        assert "cannot compute Precision::Bf16" in str(e)
        assert not mt._native.cpu_supports("bf16")
    else:
        assert mt._native.cpu_supports("bf16")
        exact = float(reference(u.double(), v.double(), log_q.double(), c.temperature))
        # Each logit errs by up to 2·2⁻⁸·Σ|u v|/τ; the loss by about that much.
        bound = 2 * 2**-8 * float((u.abs() @ v.abs().T).max()) / c.temperature
        assert abs(float(bf16) - exact) <= bound
    with pytest.raises(ValueError, match="precision must be one of"):
        mt.mns_loss(u, v, log_q, precision="fp8")
    f32 = mt.mns_loss(u, v, log_q, temperature=c.temperature, precision="f32")
    assert torch.equal(f32, mt.mns_loss(u, v, log_q, temperature=c.temperature))


def test_float32_tensors_reach_the_kernels_without_a_copy(monkeypatch):
    """The op hands the kernels NumPy views of float32 contiguous tensors:
    the arrays the native call receives share the tensors' memory."""
    import numpy as np

    import mixneg.torch as mtorch

    seen = {}
    real = mtorch._native.mns_loss

    def spy(u, v, log_q, **kw):
        seen.update(u=u, v=v, log_q=log_q, ids=kw.get("ids"))
        return real(u, v, log_q, **kw)

    monkeypatch.setattr(mtorch._native, "mns_loss", spy)
    c = CASES[14]
    u, v, log_q, ids, _ = c.arrays()
    u, v, log_q = u.float().requires_grad_(), v.float(), log_q.float()
    mt.mns_loss(u, v, log_q, ids=ids).backward()
    for name, t in (("u", u), ("v", v), ("log_q", log_q), ("ids", ids)):
        assert np.shares_memory(seen[name], t.detach().numpy()), name


def test_loss_backward_hands_on_the_gradients_without_a_copy(monkeypatch):
    """``loss.backward()`` leaves in ``.grad`` the very arrays the kernels
    wrote; a kept graph, accumulation, two losses on one tensor and a scaled
    loss still give exact multiples of the one gradient (nothing saved is
    modified in place)."""
    import numpy as np

    import mixneg.torch as mtorch

    made = []
    real = mtorch._native.mns_loss

    def spy(u, v, log_q, **kw):
        made.append(real(u, v, log_q, **kw))
        return made[-1]

    monkeypatch.setattr(mtorch._native, "mns_loss", spy)
    u, v, log_q, ids, w = CASES[14].arrays()
    q, c = u.float().requires_grad_(), v.float().requires_grad_()
    log_q = log_q.float()

    def loss():
        return mt.mns_loss(q, c, log_q, temperature=0.1, ids=ids)

    loss().backward()
    assert np.shares_memory(q.grad.numpy(), made[-1]["d_u"])
    assert np.shares_memory(c.grad.numpy(), made[-1]["d_v"])
    gq, gc = q.grad.clone(), c.grad.clone()
    q.grad = c.grad = None
    x = loss()
    x.backward(retain_graph=True)
    x.backward(retain_graph=True)
    x.backward()
    assert torch.equal(q.grad, 3 * gq) and torch.equal(c.grad, 3 * gc)
    q.grad = c.grad = None
    (loss() + loss()).backward()
    assert torch.equal(q.grad, 2 * gq) and torch.equal(c.grad, 2 * gc)
    q.grad = c.grad = None
    (loss() * 2).backward()
    assert torch.equal(q.grad, 2 * gq) and torch.equal(c.grad, 2 * gc)


def test_backward_allocates_nothing_the_size_of_the_gradients():
    """Only the loss is differentiable: autograd hands the backward no zeros
    for dU and dV (it did, B×K + N×K floats at the peak), and the backward
    of a plain ``loss.backward()`` allocates no tensor that large."""
    from torch.profiler import ProfilerActivity, profile

    b, n, k = 256, 512, 64
    g = torch.Generator().manual_seed(3)
    q = torch.randn(b, k, generator=g).requires_grad_()
    c = torch.randn(n, k, generator=g).requires_grad_()
    loss = mt.mns_loss(q, c, torch.zeros(n), temperature=0.1)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        loss.backward()
    sizes = [e.cpu_memory_usage for e in prof.events() if e.cpu_memory_usage > 0]
    assert max(sizes, default=0) < b * k * 4, sizes


def test_bfloat16_tensors_reach_the_kernels_without_a_copy(monkeypatch):
    """bfloat16 query and candidates go to the kernels as they are (uint16
    views of the tensors' memory), at the bf16 tier by default where this
    CPU computes it (else f32), and give that tier's result on float32
    tensors holding the same values bit for bit, gradients in bfloat16;
    precision="f32" gives the f32 result of those values."""
    import numpy as np

    import mixneg.torch as mtorch

    seen = {}
    real = mtorch._native.mns_loss

    def spy(u, v, log_q, **kw):
        seen.update(u=u, v=v, precision=kw["precision"])
        return real(u, v, log_q, **kw)

    monkeypatch.setattr(mtorch._native, "mns_loss", spy)
    u, v, log_q, ids, _ = CASES[14].arrays()
    log_q = log_q.float()
    qb = u.to(torch.bfloat16).requires_grad_()
    cb = v.to(torch.bfloat16).requires_grad_()
    tier = "bf16" if mtorch._native.cpu_supports("bf16") else "f32"
    for precision in (None, "f32"):
        qb.grad = cb.grad = None
        loss = mt.mns_loss(qb, cb, log_q, temperature=0.1, ids=ids, precision=precision)
        loss.backward()
        assert seen["precision"] == (precision or tier)
        for name, t in (("u", qb), ("v", cb)):
            assert seen[name].dtype == np.uint16
            assert np.shares_memory(seen[name], t.detach().view(torch.int16).numpy()), name
        q32 = qb.detach().float().requires_grad_()
        c32 = cb.detach().float().requires_grad_()
        same = mt.mns_loss(q32, c32, log_q, temperature=0.1, ids=ids, precision=precision or tier)
        same.backward()
        assert loss.dtype == torch.bfloat16 and qb.grad.dtype == torch.bfloat16
        assert torch.equal(loss, same.to(torch.bfloat16))
        assert torch.equal(qb.grad, q32.grad.to(torch.bfloat16))
        assert torch.equal(cb.grad, c32.grad.to(torch.bfloat16))


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_opcheck_bfloat16(reduction):
    u, v, log_q, ids, w = CASES[9].arrays()
    args = list(_op_args(CASES[9], reduction, True))
    args[0] = u.to(torch.bfloat16).requires_grad_()
    args[1] = v.to(torch.bfloat16).requires_grad_()
    torch.library.opcheck(torch.ops.mixneg.mns_loss.default, tuple(args))


def test_device_value_checks_give_the_cpu_paths_errors():
    """The CUDA path's value checks (device reductions judged by the crate)
    are device-agnostic: on CPU tensors they raise the CPU path's ValueError
    for each kind of bad value (the same message; a magnitude error's
    numbers to rounding), and pass good inputs."""
    c = CASES[13]
    u, v, log_q, ids, w = (None if x is None else x.to(torch.float32) for x in c.arrays())
    b = u.shape[0]
    w = torch.rand(b)
    mt._check_device_values(u, v, log_q, w, c.temperature)
    mt._check_device_values(u, v, log_q, None, c.temperature)
    bad = []
    x = v.clone()
    x[3, 1] = float("inf")
    bad.append((u, x, log_q, w))
    x = log_q.clone()
    x[-1] = float("nan")
    bad.append((u, v, x, w))
    x = w.clone()
    x[b // 2] = -0.5
    bad.append((u, v, log_q, x))
    bad.append((u * 1e20, v * 1e20, log_q, w))
    for uu, vv, lq, ww in bad:
        with pytest.raises(ValueError) as cpu:
            mt.mns_loss(uu, vv, lq, temperature=c.temperature, row_weight=ww)
        with pytest.raises(ValueError) as dev:
            mt._check_device_values(uu, vv, lq, ww, c.temperature)
        # The largest row norms are summed in another order on the device:
        # the magnitude error names the same quantity, its numbers agree to
        # rounding.
        assert str(dev.value).split(" may reach")[0] == str(cpu.value).split(" may reach")[0]
