"""mixneg.mns_loss on NumPy arrays: against the float64 reference, the
forward-only call, zero-copy reads, unmodified inputs, and two Python threads
calling at once."""

import threading
import tracemalloc

import numpy as np
import pytest
import torch
from conftest import CASES, assert_close_grad, assert_close_loss, reference

import mixneg


def _np(c, dtype=np.float32):
    u, v, log_q, ids, w = c.arrays()
    return (
        u.numpy().astype(dtype),
        v.numpy().astype(dtype),
        log_q.numpy().astype(dtype),
        None if ids is None else ids.numpy(),
        None if w is None else w.numpy().astype(dtype),
    )


def test_against_reference(case):
    u, v, lq, ids, w = _np(case)
    r = mixneg.mns_loss(
        u,
        v,
        lq,
        temperature=case.temperature,
        ids=ids,
        row_weight=w,
        correct_positive=case.correct_positive,
        positive_offset=case.offset,
    )
    tu, tv = torch.from_numpy(u).double().requires_grad_(), torch.from_numpy(v).double().requires_grad_()
    tt = torch.tensor(case.temperature, dtype=torch.float64, requires_grad=True)
    want = reference(
        tu,
        tv,
        torch.from_numpy(lq).double(),
        tt,
        ids=None if ids is None else torch.from_numpy(ids),
        row_weight=None if w is None else torch.from_numpy(w).double(),
        correct_positive=case.correct_positive,
        offset=case.offset,
    )
    want.backward()
    assert isinstance(r.loss, float)
    assert r.d_u.dtype == np.float32 and r.d_u.shape == u.shape and r.d_v.shape == v.shape
    assert r.top1.dtype == np.bool_ and r.lse.shape == (case.b,)
    assert_close_loss(torch.tensor(r.loss), want.detach())
    assert_close_grad("d_u", r.d_u, tu.grad)
    assert_close_grad("d_v", r.d_v, tv.grad)
    scale = float(tu.detach().norm() * tu.grad.norm()) / case.temperature
    assert abs(r.d_temperature - float(tt.grad)) <= 1e-5 * scale + 2.0**-24 * abs(float(tt.grad)) + 1e-12


def test_forward_only_matches_full_call():
    c = CASES[14]
    u, v, lq, ids, w = _np(c)
    kw = dict(temperature=c.temperature, ids=ids, row_weight=w, positive_offset=c.offset)
    full = mixneg.mns_loss(u, v, lq, **kw)
    fwd = mixneg.mns_forward(u, v, lq, **kw)
    assert fwd.d_u is None and fwd.d_v is None and fwd.d_temperature is None
    assert fwd.loss == full.loss
    for a, b in ((fwd.lse, full.lse), (fwd.row_loss, full.row_loss), (fwd.top1, full.top1)):
        np.testing.assert_array_equal(a, b)


def test_float64_inputs_are_converted():
    c = CASES[11]
    a = mixneg.mns_loss(*_np(c, np.float64)[:3], temperature=c.temperature)
    b = mixneg.mns_loss(*_np(c, np.float32)[:3], temperature=c.temperature)
    assert a.loss == b.loss
    np.testing.assert_array_equal(a.d_u, b.d_u)


def test_float32_inputs_are_not_copied():
    """tracemalloc sees NumPy's allocations: a C-contiguous float32 input is
    read in place (no allocation near its size during the call), while a
    float64 one is converted (a copy of float32 size is seen)."""
    rng = np.random.default_rng(0)
    b, n, k = 256, 4096, 64
    u = rng.standard_normal((b, k), dtype=np.float32) / 8
    v = rng.standard_normal((n, k), dtype=np.float32) / 8
    lq = np.full(n, -8.0, np.float32)
    mixneg.mns_loss(u, v, lq)  # warm the backend's scratch
    for arr, expect_copy in ((v, False), (v.astype(np.float64), True)):
        tracemalloc.start()
        mixneg.mns_forward(u, arr, lq)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        if expect_copy:
            assert peak >= v.nbytes, peak
        else:
            assert peak < v.nbytes // 8, peak


def test_inputs_not_modified():
    c = CASES[12]
    u, v, lq, ids, w = _np(c)
    arrays = [u, v, lq, ids, w]
    copies = [None if x is None else x.copy() for x in arrays]
    mixneg.mns_loss(u, v, lq, ids=ids, row_weight=w, positive_offset=c.offset)
    for x, y in zip(arrays, copies):
        if x is not None:
            np.testing.assert_array_equal(x, y)


def test_two_threads_same_bits():
    """Two Python threads calling at once (the GIL is released during each
    call, so the calls overlap) give the bits of one call alone."""
    rng = np.random.default_rng(1)
    b, n, k = 512, 2048, 48
    u = rng.standard_normal((b, k), dtype=np.float32) / 7
    v = rng.standard_normal((n, k), dtype=np.float32) / 7
    lq = rng.uniform(-12, -3, n).astype(np.float32)
    ids = rng.integers(0, n // 2, n)
    alone = mixneg.mns_loss(u, v, lq, temperature=0.1, ids=ids, threads=2)
    results = [None, None]

    def work(i):
        results[i] = [mixneg.mns_loss(u, v, lq, temperature=0.1, ids=ids, threads=2) for _ in range(3)]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for rs in results:
        for r in rs:
            assert r.loss == alone.loss and r.d_temperature == alone.d_temperature
            np.testing.assert_array_equal(r.d_u, alone.d_u)
            np.testing.assert_array_equal(r.d_v, alone.d_v)
            np.testing.assert_array_equal(r.lse, alone.lse)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_thread_counts_agree(threads):
    c = CASES[16]
    u, v, lq, ids, w = _np(c)
    r = mixneg.mns_loss(u, v, lq, ids=ids, row_weight=w, threads=threads)
    base = mixneg.mns_loss(u, v, lq, ids=ids, row_weight=w, threads=1)
    assert abs(r.loss - base.loss) <= 1e-6 * abs(base.loss)


def test_backend_info():
    kernel, threads = mixneg.backend_info()
    assert kernel in ("avx512", "avx2_fma", "portable") and threads >= 1


def test_gil_is_released_during_the_call():
    """While one thread is inside the kernels, another runs Python code. A
    held GIL would let the other thread in only at the window's edges (one
    switch interval, 5 ms, at most per call); released, it runs throughout."""
    import sys
    import time

    rng = np.random.default_rng(2)
    b, n, k = 2048, 8192, 64
    u = rng.standard_normal((b, k), dtype=np.float32) / 8
    v = rng.standard_normal((n, k), dtype=np.float32) / 8
    lq = np.full(n, -9.0, np.float32)
    mixneg.mns_loss(u, v, lq, threads=1)  # warm the one-thread backend
    windows, samples, done = [], [], threading.Event()

    def caller():
        for _ in range(4):
            t0 = time.perf_counter()
            mixneg.mns_loss(u, v, lq, threads=1)
            windows.append((t0, time.perf_counter()))
        done.set()

    th = threading.Thread(target=caller)
    th.start()
    while not done.is_set():
        samples.append(time.perf_counter())
        time.sleep(0.0005)
    th.join()
    switch = sys.getswitchinterval()
    for t0, t1 in windows:
        inside = [s for s in samples if t0 + switch < s < t1 - switch]
        # The call takes tens of ms; the sampler must have run through it.
        assert t1 - t0 > 4 * switch, "the call is too short for this test"
        assert inside and inside[-1] - inside[0] > 0.5 * (t1 - t0 - 2 * switch), (t1 - t0, len(inside))


def test_native_stub_matches_the_module():
    """python/mixneg/_native.pyi declares exactly the extension's functions,
    each with its parameters in order."""
    import ast
    import inspect
    from pathlib import Path

    from mixneg import _native

    stub = Path(mixneg.__file__).with_name("_native.pyi")
    tree = ast.parse(stub.read_text())
    declared = {
        f.name: [a.arg for a in f.args.args + f.args.kwonlyargs] for f in tree.body if isinstance(f, ast.FunctionDef)
    }
    native = {n: f for n, f in vars(_native).items() if callable(f) and not n.startswith("_")}
    assert set(declared) == set(native)
    for name, params in declared.items():
        assert list(inspect.signature(native[name]).parameters) == params, name


def test_bfloat16_arrays_are_their_values():
    """ml_dtypes.bfloat16 query and candidates (as JAX holds them) are read
    as bf16, and give the result of float32 arrays holding the same values,
    bit for bit, at each tier this CPU computes."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    rng = np.random.default_rng(5)
    b, n, k = 9, 40, 16
    ub = (rng.standard_normal((b, k)) / 4).astype(ml_dtypes.bfloat16)
    vb = (rng.standard_normal((n, k)) / 4).astype(ml_dtypes.bfloat16)
    lq = np.log(rng.uniform(0.1, 1.0, n)).astype(np.float32)
    u32, v32 = ub.astype(np.float32), vb.astype(np.float32)
    for precision in ("f32", "bf16"):
        try:
            want = mixneg.mns_loss(u32, v32, lq, temperature=0.2, precision=precision)
        except ValueError:
            continue  # a tier this CPU lacks
        got = mixneg.mns_loss(ub, vb, lq, temperature=0.2, precision=precision)
        assert got.loss == want.loss, precision
        assert np.array_equal(got.d_u, want.d_u) and np.array_equal(got.d_v, want.d_v), precision
