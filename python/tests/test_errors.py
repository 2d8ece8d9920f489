"""Bad input raises ValueError or TypeError carrying the numbers — from NumPy,
PyTorch and JAX — and random garbage never crashes the interpreter."""

import math

import numpy as np
import pytest
import torch

import mixneg
import mixneg.torch as mt

B, N, K = 4, 10, 3


def good():
    rng = np.random.default_rng(0)
    return dict(
        u=rng.standard_normal((B, K)).astype(np.float32),
        v=rng.standard_normal((N, K)).astype(np.float32),
        log_q=np.full(N, -5.0, np.float32),
    )


def with_(**changes):
    d = good()
    d.update(changes)
    return d


NUMPY_CASES = [
    # (arguments, keywords, exception, message fragment)
    (with_(u=np.ones((B, K), np.int32)), {}, TypeError, "floating-point"),
    (with_(u=np.ones((B, K), np.complex64)), {}, TypeError, "floating-point"),
    (with_(u="not an array"), {}, TypeError, "NumPy array"),
    (with_(u=np.ones(B * K, np.float32)), {}, ValueError, "2 dimension"),
    (with_(log_q=np.ones((N, 1), np.float32)), {}, ValueError, "1 dimension"),
    (with_(v=np.ones((N, K + 1), np.float32)), {}, ValueError, "K = 3 columns but v has 4"),
    (with_(v=np.ones((B - 1, K), np.float32), log_q=np.zeros(B - 1, np.float32)), {}, ValueError, "N >= B"),
    (with_(log_q=np.zeros(N - 1, np.float32)), {}, ValueError, "log_q has length 9, expected 10"),
    (with_(u=np.ones((0, K), np.float32)), {}, ValueError, "empty batch"),
    (with_(u=np.ones((B, 0), np.float32), v=np.ones((N, 0), np.float32)), {}, ValueError, "K = 0"),
    (good(), {"temperature": 0.0}, ValueError, "temperature must be finite and > 0, got 0.0"),
    (good(), {"temperature": -1.0}, ValueError, "got -1.0"),
    (good(), {"temperature": math.nan}, ValueError, "got nan"),
    (good(), {"temperature": math.inf}, ValueError, "got inf"),
    (good(), {"temperature": 1e-50}, ValueError, "temperature"),
    (good(), {"temperature": "hot"}, TypeError, "temperature"),
    (good(), {"positive_offset": N - B + 1}, ValueError, "positive_offset = 7 is out of range"),
    (good(), {"positive_offset": -1}, ValueError, "at least 0"),
    (good(), {"positive_offset": 1.5}, TypeError, "integer"),
    (good(), {"ids": np.zeros(N, np.float32)}, TypeError, "integer"),
    (good(), {"ids": np.zeros(N - 2, np.int64)}, ValueError, "ids has length 8, expected 10"),
    (good(), {"row_weight": np.full(B, -1.0, np.float32)}, ValueError, "row_weight[0] = -1 is negative"),
    (good(), {"row_weight": np.ones(B + 1, np.float32)}, ValueError, "row_weight has length 5"),
    (good(), {"threads": 0}, ValueError, "threads must be at least 1"),
    (with_(u=np.array([[1, np.nan, 0]] * B, np.float32)), {}, ValueError, "u[1] = NaN is not finite"),
    (with_(log_q=np.full(N, np.inf, np.float32)), {}, ValueError, "log_q[0] = inf is not finite"),
    (with_(v=np.full((N, K), 1e300)), {}, ValueError, "overflows float32"),
    (
        with_(u=np.full((B, K), 1e18, np.float32), v=np.full((N, K), 1e18, np.float32)),
        {},
        ValueError,
        "inputs too large",
    ),
]


@pytest.mark.parametrize("args,kw,exc,msg", NUMPY_CASES)
def test_numpy_bad_input(args, kw, exc, msg):
    copies = {k: np.array(x, copy=True) if isinstance(x, np.ndarray) else x for k, x in args.items()}
    with pytest.raises(exc, match=None) as e:
        mixneg.mns_loss(args["u"], args["v"], args["log_q"], **kw)
    assert msg in str(e.value), str(e.value)
    for k, x in args.items():
        if isinstance(x, np.ndarray):
            np.testing.assert_array_equal(x, copies[k])


def t(x):
    return torch.from_numpy(np.asarray(x))


TORCH_CASES = [
    (dict(query=t(np.ones((B, K), np.int64))), {}, TypeError, "floating-point"),
    (dict(query=np.ones((B, K), np.float32)), {}, TypeError, "torch.Tensor"),
    (dict(query=torch.ones(B, K, 1)), {}, ValueError, "2 dimension"),
    (dict(candidates=torch.ones(N, K + 2)), {}, ValueError, "K = 3 columns but v has 5"),
    (dict(log_q=torch.ones(N - 1)), {}, ValueError, "log_q has length 9"),
    (dict(log_q=torch.ones(N, device="meta")), {}, ValueError, "query is on cpu but log_q is on meta"),
    (
        dict(
            query=torch.ones(B, K, device="meta"),
            candidates=torch.ones(N, K, device="meta"),
            log_q=torch.ones(N, device="meta"),
        ),
        {},
        ValueError,
        "mixneg runs on CPU and CUDA tensors",
    ),
    (dict(query=torch.full((B, K), math.nan)), {}, ValueError, "u[0] = NaN is not finite"),
    ({}, {"temperature": 0.0}, ValueError, "got 0"),
    ({}, {"temperature": torch.tensor(-2.0)}, ValueError, "got -2"),
    ({}, {"temperature": torch.tensor([0.5, 0.5])}, ValueError, "one value"),
    ({}, {"temperature": torch.tensor(1)}, TypeError, "floating-point"),
    ({}, {"temperature": None}, TypeError, "temperature"),
    ({}, {"positive_offset": 99}, ValueError, "positive_offset = 99 is out of range"),
    ({}, {"positive_offset": -3}, ValueError, "at least 0"),
    ({}, {"positive_offset": 2.0}, TypeError, "int"),
    ({}, {"ids": torch.zeros(N)}, TypeError, "integer"),
    ({}, {"ids": torch.zeros(N, 2, dtype=torch.int64)}, ValueError, "1 dimension"),
    ({}, {"row_weight": torch.full((B,), -0.5)}, ValueError, "negative"),
    ({}, {"reduction": "max"}, ValueError, "reduction"),
    (dict(log_q=torch.zeros(N, requires_grad=True)), {}, ValueError, "log_q must not require grad"),
    (dict(query=torch.ones(0, K)), {}, ValueError, "empty batch"),
]


@pytest.mark.parametrize("args,kw,exc,msg", TORCH_CASES)
def test_torch_bad_input(args, kw, exc, msg):
    g = good()
    a = dict(query=t(g["u"]), candidates=t(g["v"]), log_q=t(g["log_q"]))
    a.update(args)
    with pytest.raises(exc) as e:
        mt.mns_loss(a["query"], a["candidates"], a["log_q"], **kw)
    assert msg in str(e.value), str(e.value)


def test_jax_bad_input():
    import jax.numpy as jnp

    import mixneg.jax as mj

    g = good()
    u, v, lq = jnp.asarray(g["u"]), jnp.asarray(g["v"]), jnp.asarray(g["log_q"])
    for call, exc, msg in [
        (lambda: mj.mns_loss(u.astype(jnp.int32), v, lq), TypeError, "floating-point"),
        (lambda: mj.mns_loss(u[0], v, lq), ValueError, "2 dimension"),
        (lambda: mj.mns_loss(u, v[:, :2], lq), ValueError, "K = 3 columns"),
        (lambda: mj.mns_loss(u, v, lq[:-1]), ValueError, "log_q has length 9"),
        (lambda: mj.mns_loss(u, v, lq, temperature=0.0), ValueError, "temperature"),
        (lambda: mj.mns_loss(u, v, lq, positive_offset=7), ValueError, "out of range"),
        (lambda: mj.mns_loss(u.at[0, 0].set(jnp.nan), v, lq), ValueError, "u[0] = NaN is not finite"),
        (lambda: mj.mns_loss(u, v, lq, ids=jnp.zeros(N)), TypeError, "integer"),
        (lambda: mj.mns_loss(u, v, lq, reduction="avg"), ValueError, "reduction"),
    ]:
        with pytest.raises(exc) as e:
            call()
        assert msg in str(e.value), str(e.value)


def test_random_garbage_never_crashes():
    """Random shapes, dtypes, values and options: every call returns or
    raises ValueError/TypeError; a crash would take the test process down."""
    rng = np.random.default_rng(7)
    dtypes = [np.float32, np.float64, np.float16, np.int32, np.bool_]
    specials = [0.0, -0.0, np.nan, np.inf, -np.inf, 1e38, 1e-45, -1e30]
    outcomes = {"ok": 0, "ValueError": 0, "TypeError": 0}
    for _ in range(400):
        b, n, k = (int(x) for x in rng.integers(0, 6, 3))
        kv = k if rng.random() < 0.8 else int(rng.integers(0, 6))
        nq = n if rng.random() < 0.8 else int(rng.integers(0, 8))

        def arr(shape):
            x = rng.standard_normal(shape) * 10.0 ** rng.integers(-3, 4)
            if x.size and rng.random() < 0.2:
                x.flat[int(rng.integers(0, x.size))] = specials[int(rng.integers(0, len(specials)))]
            with np.errstate(over="ignore", invalid="ignore"):  # the test's own casts
                return x.astype(dtypes[int(rng.integers(0, len(dtypes)))] if rng.random() < 0.3 else np.float32)

        kw = {}
        if rng.random() < 0.3:
            kw["ids"] = rng.integers(-3, 3, nq if rng.random() < 0.8 else n + 1)
        if rng.random() < 0.3:
            kw["row_weight"] = arr((b,))
        if rng.random() < 0.5:
            kw["temperature"] = float(specials[int(rng.integers(0, len(specials)))]) if rng.random() < 0.3 else 0.1
        if rng.random() < 0.3:
            kw["positive_offset"] = int(rng.integers(-2, 8))
        try:
            r = mixneg.mns_loss(arr((b, k)), arr((n, kv)), arr((nq,)), **kw)
            assert math.isfinite(r.loss) and np.isfinite(r.d_u).all() and np.isfinite(r.d_v).all()
            outcomes["ok"] += 1
        except (ValueError, TypeError) as e:
            outcomes[type(e).__name__] += 1
    assert outcomes["ok"] > 0 and outcomes["ValueError"] > 0, outcomes


@pytest.mark.parametrize("case", ["clean", "nan_v", "inf_log_q", "negative_weight", "nan_weight", "no_weight"])
def test_value_summary_is_the_same_from_numpy_and_torch(case):
    """The value checks of CUDA tensors (torch reductions on the device) and
    of concrete JAX arrays (NumPy on the host) summarise the inputs alike."""
    from mixneg import _common

    rng = np.random.default_rng(3)
    u = rng.standard_normal((5, 3)).astype(np.float32)
    v = rng.standard_normal((7, 3)).astype(np.float32)
    lq = rng.standard_normal(7).astype(np.float32)
    w = rng.random(5).astype(np.float32)
    if case == "nan_v":
        v[4, 1] = np.nan
        v[6, 0] = np.inf
    elif case == "inf_log_q":
        lq[2] = -np.inf
    elif case == "negative_weight":
        w[3] = -0.5
        w[4] = -1.0
    elif case == "nan_weight":
        w[1] = np.nan
    elif case == "no_weight":
        w = None
    host = _common.value_summary(np, lambda x: np.asarray(x, np.float64), u, v, lq, w)
    t = [None if x is None else torch.from_numpy(x) for x in (u, v, lq, w)]
    dev = _common.value_summary(torch, lambda x: x.to(torch.float64), *t)
    assert repr(host) == repr(dev)
    expect_nonfinite = {"nan_v": ("v", 13), "inf_log_q": ("log_q", 2), "nan_weight": ("row_weight", 1)}.get(case)
    assert (host[0][:2] if host[0] else None) == expect_nonfinite
    if case == "negative_weight":
        assert host[1] == (3, -0.5)
    if host[0] is None:
        assert host[2] == pytest.approx(np.linalg.norm(u.astype(np.float64), axis=1).max(), rel=1e-12)
