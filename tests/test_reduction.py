"""The reduction registry: each op's limit, static apply, fixed-shape variant and FLOPs agree."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tofu_jax import reduction
from tofu_jax.errors import UserError
from tofu_jax.reduction import OPS, REDUCTIONS, Inputs


def _tokens(seed: int, n: int, dim: int = 6):
    kx, km, ks = jax.random.split(jax.random.PRNGKey(seed), 3)
    x = jax.random.normal(kx, (2, n, dim))
    size = jnp.ones((2, n, 1))
    return x, size, jax.random.normal(km, (2, n, 4)), jax.random.uniform(ks, (2, n))


@pytest.mark.parametrize("op", OPS)
@settings(max_examples=8)
@given(n=st.integers(3, 17), protected=st.integers(0, 2), seed=st.integers(0, 99))
def test_apply_removes_exactly_r_up_to_the_limit(op, n, protected, seed):
    x, size, metric, scores = _tokens(seed, n)
    sources = jnp.broadcast_to(jnp.eye(n), (2, n, n))
    limit = reduction.limit(op, n, protected)
    assert 0 <= limit < n - protected or limit == 0
    inputs = Inputs(metric, scores, protected, "max", sources)
    out, out_size, out_sources, matching = reduction.apply(op, x, size, limit, inputs)
    assert out.shape == (2, n - limit, 6) and out_size.shape == (2, n - limit, 1)
    assert out_sources.shape == (2, n - limit, n)
    np.testing.assert_allclose(out[:, :protected], x[:, :protected], rtol=0, atol=0)  # prefix stays
    if op.startswith("merge"):  # merged tokens stand for all the tokens they absorbed
        np.testing.assert_allclose(out_size.sum(axis=(1, 2)), n, rtol=1e-6)
    assert (matching is not None) == (REDUCTIONS[op].restorable and limit > 0)


@pytest.mark.parametrize("op", [op for op in OPS if op != "none"])
def test_one_past_the_limit_is_refused(op):
    x, size, metric, scores = _tokens(0, 9)
    limit = reduction.limit(op, 9, 1)
    with pytest.raises(UserError, match="r="):
        reduction.apply(op, x, size, limit + 1, Inputs(metric, scores, 1))


@pytest.mark.parametrize("op", OPS)
def test_masked_variant_matches_static_apply(op):
    n, r, protected = 11, 3, 1
    x, size, metric, scores = _tokens(1, n)
    want_x, want_size, _, _ = reduction.apply(op, x, size, r if op != "none" else 0, Inputs(metric, scores))
    got_x, got_size = reduction.apply_masked(
        x, size, np.int32(n), np.int32(OPS.index(op)), np.int32(r), metric, scores, protected=protected
    )
    kept = want_x.shape[1]
    np.testing.assert_allclose(got_x[:, :kept], want_x, atol=1e-6)
    np.testing.assert_allclose(got_size[:, :kept], want_size, atol=1e-6)
    assert float(jnp.abs(got_size[:, kept:]).sum()) == 0.0


@pytest.mark.parametrize("op", OPS)
def test_selection_cost_is_zero_without_removal_and_vectorised(op):
    macs = REDUCTIONS[op].selection_macs
    assert float(macs(np.int64(10), np.int64(10), 8)) == 0
    table = macs(np.arange(4, 10), np.arange(4, 10) - 1, 8)
    assert table.shape == (6,) and (table >= 0).all()


def test_every_schedule_op_is_registered():
    from tofu_jax.schedule import BlockReduction

    for op in OPS:
        BlockReduction(op, 0)
    with pytest.raises(UserError, match="unknown op"):
        BlockReduction("merge_magic", 1)
