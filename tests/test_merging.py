"""The ops on a matching against the NumPy reference, plus hypothesis properties (docs/algorithms.md §3)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests import reference
from tests.helpers import random_sizes, random_tokens
from tofu_jax import matching as M
from tofu_jax import merging as G

OP_NORMS = [("prune", "max"), ("merge_avg", "max"), ("merge_mlerp", "max"), ("merge_mlerp", "weighted_mean")]


@pytest.mark.parametrize("op,norm", OP_NORMS)
@pytest.mark.parametrize("protected", [0, 1, 2, 5])
def test_ops_equal_reference(op, norm, protected):
    x, metric, size = random_tokens(1, 2, 21, 6), random_tokens(2, 2, 21, 4), random_sizes(3, 2, 21)
    r = 7
    m = M.bipartite_soft_matching(jnp.asarray(metric), r, protected=protected)
    fn = {"prune": G.prune, "merge_avg": G.merge_avg}.get(op)
    if fn is None:
        out, out_s = G.merge_mlerp(jnp.asarray(x), jnp.asarray(size), m, norm=norm)
    else:
        out, out_s = fn(jnp.asarray(x), jnp.asarray(size), m)
    plan = reference.matching(metric, r, protected)
    ref_x, ref_s = reference.reduce(x, size, plan, op, norm, protected)
    np.testing.assert_allclose(np.asarray(out), ref_x, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(out_s), ref_s, rtol=1e-6, atol=1e-6)
    assert out.shape == (2, 21 - r, 6)


# Few distinct shapes keep XLA's per-shape compilation cache warm across examples.
shapes = st.tuples(st.sampled_from([1, 2]), st.sampled_from([3, 6, 17, 24]), st.sampled_from([1, 4]))


@st.composite
def problems(draw):
    b, n, c = draw(shapes)
    protected = draw(st.sampled_from([0, 1, 2]))
    n = max(n, protected + 1)
    r = draw(st.integers(0, M.max_reduction(n, protected)))
    seed = draw(st.integers(0, 2**16))
    return b, n, c, r, protected, seed


@given(problems())
def test_merge_avg_preserves_weighted_sum_and_size(p):
    b, n, c, r, protected, seed = p
    x, size = random_tokens(seed, b, n, c), random_sizes(seed, b, n)
    m = M.bipartite_soft_matching(jnp.asarray(random_tokens(seed + 9, b, n, c)), r, protected=protected)
    out, out_s = G.merge_avg(jnp.asarray(x), jnp.asarray(size), m)
    np.testing.assert_allclose(np.asarray((out * out_s).sum(1)), (x * size).sum(1), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(out_s.sum(1)), size.sum(1), rtol=1e-6)


@given(problems(), st.sampled_from(["max", "weighted_mean"]))
def test_mlerp_norm_and_direction(p, norm):
    b, n, c, r, protected, seed = p
    x, size = random_tokens(seed, b, n, c), random_sizes(seed, b, n)
    m = M.bipartite_soft_matching(jnp.asarray(random_tokens(seed + 9, b, n, c)), r, protected=protected)
    avg, _ = G.merge_avg(jnp.asarray(x), jnp.asarray(size), m)
    ml, _ = G.merge_mlerp(jnp.asarray(x), jnp.asarray(size), m, norm=norm)
    plan = reference.matching(random_tokens(seed + 9, b, n, c), r, protected)
    ref, _ = reference.reduce(x, size, plan, "merge_mlerp", norm, protected)
    # Norms equal the rule (max or weighted mean of the merged norms): checked via the reference.
    np.testing.assert_allclose(
        np.linalg.norm(np.asarray(ml), axis=-1), np.linalg.norm(ref, axis=-1), rtol=1e-5, atol=1e-5
    )
    # Direction equals the size-weighted average's.
    a_dir = np.asarray(avg) / np.maximum(np.linalg.norm(np.asarray(avg), axis=-1, keepdims=True), 1e-6)
    m_dir = np.asarray(ml) / np.maximum(np.linalg.norm(np.asarray(ml), axis=-1, keepdims=True), 1e-6)
    mask = np.linalg.norm(np.asarray(avg), axis=-1) > 1e-3
    np.testing.assert_allclose(m_dir[mask], a_dir[mask], atol=1e-4)
    if norm == "max":  # MLERP never shrinks below the average's norm.
        assert np.all(
            np.linalg.norm(np.asarray(ml), axis=-1) >= np.linalg.norm(np.asarray(avg), axis=-1) - 1e-4
        )


@given(problems(), st.sampled_from(["prune", "merge_avg", "merge_mlerp"]))
def test_protected_tokens_never_move(p, op):
    b, n, c, r, protected, seed = p
    x = random_tokens(seed, b, n, c)
    m = M.bipartite_soft_matching(jnp.asarray(random_tokens(seed + 3, b, n, c)), r, protected=protected)
    fn = {"prune": G.prune, "merge_avg": G.merge_avg, "merge_mlerp": G.merge_mlerp}[op]
    out, out_s = fn(jnp.asarray(x), None, m)
    for t in range(protected):
        np.testing.assert_array_equal(np.asarray(out[:, t]), x[:, t])
        np.testing.assert_array_equal(np.asarray(out_s[:, t, 0]), 1.0)
    if protected >= 1:
        assert not np.any(np.asarray(m.src_idx) == 0)
    if protected >= 2:
        assert not np.any(np.asarray(m.dst_idx) == 0)


@given(problems(), st.sampled_from(["prune", "merge_avg", "merge_mlerp"]))
def test_r_zero_is_identity(p, op):
    b, n, c, _, protected, seed = p
    x = random_tokens(seed, b, n, c)
    m = M.bipartite_soft_matching(jnp.asarray(x), 0, protected=protected)
    fn = {"prune": G.prune, "merge_avg": G.merge_avg, "merge_mlerp": G.merge_mlerp}[op]
    out, _ = fn(jnp.asarray(x), None, m)
    pos = np.asarray(M.output_positions(m, n))
    np.testing.assert_array_equal(np.asarray(out), np.take_along_axis(x, pos[..., None], axis=1))
    if protected < 2:
        np.testing.assert_array_equal(np.sort(pos, axis=1), np.broadcast_to(np.arange(n), (b, n)))


@given(problems())
def test_unmerge_restores_untouched_tokens(p):
    b, n, c, r, protected, seed = p
    x = random_tokens(seed, b, n, c)
    m = M.bipartite_soft_matching(jnp.asarray(random_tokens(seed + 5, b, n, c)), r, protected=protected)
    merged, _ = G.merge_mlerp(jnp.asarray(x), None, m)
    back = np.asarray(G.unmerge(merged, m, n))
    assert back.shape == x.shape
    src_pos = 2 * np.asarray(m.src_idx)
    dst_pos = 2 * np.asarray(m.dst_idx) + 1
    for i in range(b):
        touched = set(src_pos[i]) | set(dst_pos[i])
        keep = [t for t in range(n) if t not in touched]
        np.testing.assert_array_equal(back[i, keep], x[i, keep])
        # Every src copies its destination's merged value.
        np.testing.assert_array_equal(back[i, src_pos[i]], back[i, dst_pos[i]])


def test_zero_norm_tokens_give_finite_outputs():
    x = np.zeros((2, 9, 4), np.float32)
    x[:, 3] = 1.0
    x[:, 4] = -1.0  # antipodal: their average is the zero vector
    m = M.bipartite_soft_matching(jnp.asarray(x), 4, protected=1)
    for norm in ("max", "weighted_mean"):
        out, s = G.merge_mlerp(jnp.asarray(x), None, m, norm=norm)
        assert np.all(np.isfinite(np.asarray(out))) and np.all(np.isfinite(np.asarray(s)))
    out, _ = G.merge_avg(jnp.asarray(x), None, m)
    assert np.all(np.isfinite(np.asarray(out)))


def test_bf16_inputs_stay_bf16_and_match_fp32():
    x = random_tokens(4, 2, 33, 16)
    m = M.bipartite_soft_matching(jnp.asarray(x), 12)
    out16, _ = G.merge_mlerp(jnp.asarray(x, jnp.bfloat16), None, m)
    out32, _ = G.merge_mlerp(jnp.asarray(x), None, m)
    assert out16.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out16, np.float32), np.asarray(out32), rtol=2e-2, atol=2e-2)


def test_sources_track_absorbed_patches():
    n = 13
    x = random_tokens(6, 2, n, 5)
    sources = jnp.broadcast_to(jnp.eye(n), (2, n, n))
    m = M.bipartite_soft_matching(jnp.asarray(x), 6)
    merged = np.asarray(G.merge_sources(sources, m, merged=True))
    pruned = np.asarray(G.merge_sources(sources, m, merged=False))
    assert merged.shape == pruned.shape == (2, n - 6, n)
    np.testing.assert_array_equal(merged.sum((1, 2)), n)  # every patch covered exactly once
    np.testing.assert_array_equal(pruned.sum((1, 2)), n - 6)  # pruned patches vanish
    assert merged.max() == 1.0


def test_importance_prune_drops_lowest_and_keeps_cls():
    x = random_tokens(7, 2, 10, 3)
    scores = np.array([np.arange(10)[::-1], np.arange(10)], np.float32)
    scores[:, 0] = -100.0  # CLS is protected even with the lowest score
    out, s = G.prune_importance(jnp.asarray(x), None, jnp.asarray(scores), 4)
    np.testing.assert_array_equal(np.asarray(out[0]), x[0, [0, 1, 2, 3, 4, 5]])
    np.testing.assert_array_equal(np.asarray(out[1]), x[1, [0, 5, 6, 7, 8, 9]])
    assert s.shape == (2, 6, 1)


def test_size_bias_is_log_size():
    size = jnp.asarray(random_sizes(0, 2, 7))
    bias = G.size_bias(size)
    assert bias.shape == (2, 1, 1, 7)
    np.testing.assert_allclose(np.asarray(bias)[:, 0, 0], np.log(np.asarray(size)[..., 0]))


def test_importance_keep_indices_refuses_r_out_of_range():
    with pytest.raises(ValueError, match="r=5 out of range"):
        G.importance_keep_indices(jnp.zeros((2, 5)), 5)


@pytest.mark.parametrize("protected", [4, 5])  # the last protected token in B, in A
def test_many_protected_tokens_stay_first_in_order_and_never_move(protected):
    """Register tokens: every protected token is never a source or a destination and leads the output."""
    n, r = 23, (23 - protected) // 2
    x = jnp.asarray(random_tokens(4, 2, n, 6))
    m = M.bipartite_soft_matching(x, r, protected=protected)
    pa, pb = M.protected_split(protected)
    assert (np.asarray(m.src_idx) >= pa).all() and (np.asarray(m.dst_idx) >= pb).all()
    for op in (G.prune, G.merge_avg, G.merge_mlerp):
        out, size = op(x, None, m)
        np.testing.assert_array_equal(np.asarray(out[:, :protected]), np.asarray(x[:, :protected]))
        np.testing.assert_array_equal(np.asarray(size[:, :protected]), 1.0)
    positions = np.asarray(M.output_positions(m, n))
    np.testing.assert_array_equal(
        positions[:, :protected], np.broadcast_to(np.arange(protected), (2, protected))
    )
    restored = G.unmerge(G.merge_avg(x, None, m)[0], m, n)
    np.testing.assert_array_equal(np.asarray(restored[:, :protected]), np.asarray(x[:, :protected]))
    keep = G.importance_keep_indices(
        jnp.asarray(random_tokens(5, 2, n, 1)[..., 0]), n - protected - 1, protected=protected
    )
    np.testing.assert_array_equal(
        np.asarray(keep[:, :protected]), np.broadcast_to(np.arange(protected), (2, protected))
    )


def test_mismatched_batch_raises():
    m = M.bipartite_soft_matching(jnp.zeros((2, 10, 4)), 2)
    with pytest.raises(ValueError, match="batch"):
        G.merge_avg(jnp.zeros((3, 10, 4)), None, m)
    with pytest.raises(ValueError, match="A tokens"):
        G.merge_avg(jnp.zeros((2, 14, 4)), None, m)


def test_one_compile_per_static_config_and_vmap():
    traces = []

    def fn(x, r):
        traces.append(r)
        m = M.bipartite_soft_matching(x, r)
        return G.merge_mlerp(x, None, m)[0]

    jitted = jax.jit(fn, static_argnums=1)
    for seed in range(3):
        jitted(jnp.asarray(random_tokens(seed, 2, 15, 4)), 3)
    assert traces == [3]
    jitted(jnp.asarray(random_tokens(0, 2, 15, 4)), 4)
    assert traces == [3, 4]
    # vmap over an extra leading axis gives the same as a loop.
    xs = jnp.asarray(random_tokens(1, 3, 15, 4)).reshape(3, 1, 15, 4)
    batched = jax.vmap(lambda x: fn(x, 5))(xs)
    looped = jnp.stack([fn(x, 5) for x in xs])
    np.testing.assert_allclose(np.asarray(batched), np.asarray(looped), rtol=1e-6)
