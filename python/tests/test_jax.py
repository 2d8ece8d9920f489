"""mixneg.jax under jax.jit against jax.grad of a float64 JAX reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import LOSS_ATOL, LOSS_RTOL

import mixneg
import mixneg._native as native
import mixneg.jax as mj

jax.config.update("jax_enable_x64", True)


def reference(u, v, log_q, t, ids, w, correct_positive, offset, reduction):
    b, n = u.shape[0], v.shape[0]
    pos = jnp.arange(b) + offset
    s = u @ v.T / t - log_q
    if not correct_positive:
        s = s.at[jnp.arange(b), pos].add(log_q[pos])
    if ids is not None:
        hit = (ids[None, :] == ids[pos][:, None]) & (jnp.arange(n)[None, :] != pos[:, None])
        s = jnp.where(hit, -jnp.inf, s)
    rows = jax.nn.logsumexp(s, axis=1) - s[jnp.arange(b), pos]
    if w is not None:
        rows = rows * w
    return rows.mean() if reduction == "mean" else rows.sum() if reduction == "sum" else rows


def _norm_err(a, b):
    return float(jnp.linalg.norm(jnp.ravel(a - b))), float(jnp.linalg.norm(jnp.ravel(b)))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32], ids=["f64", "f32"])
def test_against_jax_grad(case, reduction, dtype):
    u, v, log_q, ids, w = (None if x is None else jnp.asarray(x.numpy()) for x in case.arrays())
    u, v = u.astype(dtype), v.astype(dtype)
    g = jnp.asarray(np.random.default_rng(case.seed).standard_normal(case.b))
    opts = dict(correct_positive=case.correct_positive, offset=case.offset, reduction=reduction)

    def mine(u, v, t, w):
        out = mj.mns_loss(
            u,
            v,
            log_q,
            temperature=t,
            ids=ids,
            row_weight=w,
            correct_positive=case.correct_positive,
            positive_offset=case.offset,
            reduction=reduction,
        )
        return (out * (g if reduction == "none" else 1.0)).sum().astype(jnp.float64), out

    def ref(u, v, t, w):
        out = reference(u.astype(jnp.float64), v.astype(jnp.float64), log_q, t, ids, w, **opts)
        return (out * (g if reduction == "none" else 1.0)).sum(), out

    t = jnp.asarray(case.temperature, dtype=dtype)
    wa = w if w is not None else None
    (val, out), grads = jax.jit(jax.value_and_grad(mine, argnums=(0, 1, 2), has_aux=True))(u, v, t, wa)
    (rval, rout), rgrads = jax.value_and_grad(ref, argnums=(0, 1, 2), has_aux=True)(u, v, jnp.float64(t), wa)
    assert out.dtype == dtype and grads[0].dtype == dtype and grads[2].dtype == dtype
    # Plain (undifferentiated) evaluation under jit runs the forward-only kernel.
    assert jnp.array_equal(jax.jit(lambda u, v: mine(u, v, t, wa)[1])(u, v), out)
    ur = 2.0**-24 if dtype == jnp.float32 else 0.0
    err, size = _norm_err(out, rout)
    assert err <= (LOSS_RTOL + ur) * size + LOSS_ATOL * out.size**0.5
    for name, a, b in zip(("query", "candidates"), grads[:2], rgrads[:2]):
        err, size = _norm_err(a, b)
        assert err <= (1e-5 + ur) * size + 1e-9 * a.size**0.5, (name, err, size)
    # dτ: bounded through dU (see test_torch.assert_close_dtemperature).
    scale = float(jnp.linalg.norm(u) * jnp.linalg.norm(rgrads[0])) / case.temperature
    assert abs(float(grads[2]) - float(rgrads[2])) <= 1e-5 * scale + 2.0**-23 * abs(float(rgrads[2])) + 1e-12


def test_row_weight_gradient():
    rng = np.random.default_rng(3)
    b, n, k = 6, 15, 5
    u, v = jnp.asarray(rng.standard_normal((b, k)) / 2), jnp.asarray(rng.standard_normal((n, k)) / 2)
    lq, w = jnp.asarray(rng.uniform(-9, -3, n)), jnp.asarray(rng.random(b))
    for reduction in ("mean", "sum", "none"):
        a = jax.jit(jax.grad(lambda w, red=reduction: mj.mns_loss(u, v, lq, row_weight=w, reduction=red).sum()))(w)
        r = jax.grad(lambda w, red=reduction: reference(u, v, lq, 1.0, None, w, True, 0, red).sum())(w)
        err, size = _norm_err(a, r)
        assert err <= 1e-5 * size, (reduction, err, size)


def _bf16_problem():
    rng = np.random.default_rng(5)
    b, n, k = 9, 23, 16
    u = jnp.asarray(rng.standard_normal((b, k)) / 3, dtype=jnp.bfloat16)
    v = jnp.asarray(rng.standard_normal((n, k)) / 3, dtype=jnp.bfloat16)
    return u, v, jnp.asarray(rng.uniform(-9, -3, n), dtype=jnp.float32)


def _loss_and_grads(u, v, lq, **kw):
    return jax.jit(jax.value_and_grad(lambda u, v: mj.mns_loss(u, v, lq, temperature=0.1, **kw), argnums=(0, 1)))(u, v)


def test_bfloat16_embeddings_are_their_float32_values():
    u, v, lq = _bf16_problem()
    l16, g16 = _loss_and_grads(u, v, lq, precision="f32")
    l32, g32 = _loss_and_grads(u.astype(jnp.float32), v.astype(jnp.float32), lq, precision="f32")
    assert l16.dtype == g16[0].dtype == g16[1].dtype == jnp.bfloat16
    assert l16 == l32.astype(jnp.bfloat16)
    for a, b in zip(g16, g32):
        assert jnp.array_equal(a, b.astype(jnp.bfloat16))


@pytest.mark.skipif(not native.cpu_supports("bf16"), reason="skipping: the CPU lacks AVX512_BF16")
def test_bf16_tier_is_the_native_call():
    u, v, lq = _bf16_problem()
    u32, v32 = u.astype(jnp.float32), v.astype(jnp.float32)
    loss, (gu, gv) = _loss_and_grads(u32, v32, lq, precision="bf16")
    r = mixneg.mns_loss(np.asarray(u32), np.asarray(v32), np.asarray(lq), temperature=0.1, precision="bf16")
    assert float(loss) == r.loss
    assert np.array_equal(np.asarray(gu), r.d_u) and np.array_equal(np.asarray(gv), r.d_v)
    # bfloat16 embeddings default to this tier.
    l16, g16 = _loss_and_grads(u, v, lq)
    assert l16 == loss.astype(jnp.bfloat16) and jnp.array_equal(g16[0], gu.astype(jnp.bfloat16))


def test_precision_errors():
    u, v, lq = _bf16_problem()
    with pytest.raises(ValueError, match="precision must be one of"):
        mj.mns_loss(u, v, lq, precision="f16")
    with pytest.raises(ValueError, match="not computed by this CPU"):
        mj.mns_loss(u, v, lq, precision="tf32")
    if not native.cpu_supports("bf16"):
        with pytest.raises(ValueError, match="not computed by this CPU"):
            mj.mns_loss(u, v, lq, precision="bf16")
        # and bfloat16 embeddings fall back to f32
        assert mj.mns_loss(u, v, lq) == mj.mns_loss(u, v, lq, precision="f32")
