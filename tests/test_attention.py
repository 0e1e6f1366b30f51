"""The one attention: fused path against the explicit softmax, and the CLS row on its own."""

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from tofu_jax.attention import attend, cls_attention


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
