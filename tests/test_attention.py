"""The one attention: fused path against the explicit softmax, the CLS row, the Linen and NNX modules."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given
from hypothesis import strategies as st

from tofu_jax.attention import ToFuAttention, ToFuAttentionNNX, attend, cls_attention


def _qkv(seed, b=2, n=13, h=3, hd=8):
    keys = jax.random.split(jax.random.PRNGKey(seed), 4)
    q, k, v = (jax.random.normal(kk, (b, n, h, hd)) for kk in keys[:3])
    size = jax.random.randint(keys[3], (b, n, 1), 1, 9).astype(jnp.float32)
    return q, k, v, size


@given(seed=st.integers(0, 1000), prop=st.booleans())
def test_fused_equals_explicit_softmax(seed, prop):
    q, k, v, size = _qkv(seed)
    size = size if prop else None
    np.testing.assert_allclose(attend(q, k, v, size), attend(q, k, v, size, fused=False), atol=2e-6)


def test_size_bias_is_proportional_attention():
    q, k, v, _ = _qkv(0, n=5)
    # Two copies of one key/value with size 1 each equal that key/value once with size 2.
    k2, v2 = jnp.concatenate([k, k[:, -1:]], 1), jnp.concatenate([v, v[:, -1:]], 1)
    q2 = jnp.concatenate([q, q[:, -1:]], 1)
    size = jnp.ones((2, 5, 1)).at[:, -1].set(2.0)
    np.testing.assert_allclose(attend(q, k, v, size)[:, :5], attend(q2, k2, v2)[:, :5], atol=2e-6)


@given(seed=st.integers(0, 1000), prop=st.booleans())
def test_cls_attention_is_the_cls_row(seed, prop):
    q, k, _, size = _qkv(seed)
    size = size if prop else None
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(8.0)
    if size is not None:
        logits = logits + jnp.log(size)[:, None, None, :, 0]
    expected = jax.nn.softmax(logits, -1)[:, :, 0].mean(1)
    np.testing.assert_allclose(cls_attention(q, k, size), expected, atol=1e-6)


def test_bfloat16_runs_fused():
    q, k, v, size = _qkv(1)
    out = attend(q.astype(jnp.bfloat16), k.astype(jnp.bfloat16), v.astype(jnp.bfloat16), size)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out, np.float32), attend(q, k, v, size), atol=0.05)


def test_unit_sizes_change_nothing():
    q, k, v, _ = _qkv(2)
    ones = jnp.ones(q.shape[:2] + (1,))
    np.testing.assert_allclose(attend(q, k, v), attend(q, k, v, ones, fused=False), atol=2e-6)


def _x(seed=0, b=2, n=11, c=6):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(b, n, c)).astype(np.float32))


def _sizes(seed, b, n):
    return jnp.asarray(np.random.default_rng(seed + 7).integers(1, 4, size=(b, n, 1)).astype(np.float32))


def _manual_cross(params, queries, x, size, heads):
    q = jnp.einsum("bnd,dhk->bnhk", queries, params["query"]["kernel"]) + params["query"]["bias"]
    k, v = (jnp.einsum("bnd,dhk->bnhk", x, params[n]["kernel"]) + params[n]["bias"] for n in ("key", "value"))
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1]) + jnp.log(size)[:, None, None, :, 0]
    out = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, -1), v)
    return jnp.einsum("bqhd,hdo->bqo", out, params["out"]["kernel"]) + params["out"]["bias"], k.mean(axis=2)


def _manual_attention(params, x, size, heads):
    q, k, v = (
        jnp.einsum("bnd,dhk->bnhk", x, params[n]["kernel"]) + params[n]["bias"]
        for n in ("query", "key", "value")
    )
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1]) + jnp.log(size)[:, None, None, :, 0]
    out = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, -1), v)
    return jnp.einsum("bqhd,hdo->bqo", out, params["out"]["kernel"]) + params["out"]["bias"], k.mean(axis=2)


@pytest.mark.parametrize("fused", [True, False])
def test_linen_and_nnx_attention_agree_with_manual(fused):
    x, size = _x(6, n=9, c=16), _sizes(6, 2, 9)
    params = ToFuAttention(4).init(jax.random.PRNGKey(0), x)["params"]
    params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.PRNGKey(1), p.shape), params)
    want_out, want_metric = _manual_attention(params, x, size, 4)
    out, metric = ToFuAttention(4, fused=fused).apply({"params": params}, x, size)
    np.testing.assert_allclose(out, want_out, atol=2e-5)
    np.testing.assert_allclose(metric, want_metric, atol=1e-6)
    mod = ToFuAttentionNNX(16, 4, rngs=nnx.Rngs(0), fused=fused).load_linen(params)
    out2, metric2 = mod(x, size)
    np.testing.assert_allclose(out2, want_out, atol=2e-5)
    np.testing.assert_allclose(metric2, want_metric, atol=1e-6)
    # Asked for, the keys and the CLS query's attention come along (what the ViT's blocks use).
    _, _, keys, cls = ToFuAttention(4, fused=fused).apply(
        {"params": params}, x, size, return_keys=True, return_cls_attention=True
    )
    want_keys = jnp.einsum("bnd,dhk->bnhk", x, params["key"]["kernel"]) + params["key"]["bias"]
    np.testing.assert_allclose(keys, want_keys, atol=1e-5)
    want_q = jnp.einsum("bnd,dhk->bnhk", x, params["query"]["kernel"]) + params["query"]["bias"]
    np.testing.assert_allclose(cls, cls_attention(want_q, want_keys, size), atol=1e-6)
    _, _, keys2, cls2 = mod(x, size, return_keys=True, return_cls_attention=True)
    np.testing.assert_allclose(keys2, keys, atol=1e-5)
    np.testing.assert_allclose(cls2, cls, atol=1e-6)


def test_cross_attention_takes_keys_and_values_from_kv():
    x, size = _x(7, n=9, c=16), _sizes(7, 2, 9)
    probe = _x(8, b=2, n=1, c=16)
    params = ToFuAttention(4).init(jax.random.PRNGKey(0), x)["params"]
    out, metric = ToFuAttention(4).apply({"params": params}, probe, size, kv=x)
    assert out.shape == (2, 1, 16) and metric.shape == (2, 9, 4)
    want, _ = _manual_cross(params, probe, x, size, 4)
    np.testing.assert_allclose(out, want, atol=2e-5)
