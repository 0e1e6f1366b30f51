"""tofu_jax.blocks: TokenReducer and restore."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tofu_jax.blocks import ReductionState, TokenReducer, restore_all
from tofu_jax.matching import output_positions

OPS = ("prune", "merge_avg", "merge_mlerp")


def _x(seed=0, b=2, n=11, c=6):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(b, n, c)).astype(np.float32))


def _sizes(seed, b, n):
    return jnp.asarray(np.random.default_rng(seed + 7).integers(1, 4, size=(b, n, 1)).astype(np.float32))


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("protected", [0, 1, 2])
def test_reduce_restore_shapes(op, protected):
    x = _x(1)
    reducer = TokenReducer(op, 4, protected=protected)
    xr, size, state = reducer(x, _sizes(1, 2, 11), x)
    assert xr.shape == (2, 7, 6) and size.shape == (2, 7, 1)
    assert state.r == 4 and state.num_tokens == 11 and reducer.tokens_after(11) == 7
    assert state.restore(xr).shape == x.shape
    assert state.restore(xr[..., :2]).shape == (2, 11, 2)  # any feature width: dense outputs
    if op != "prune":  # merges keep the total size
        np.testing.assert_allclose(size.sum(axis=1), _sizes(1, 2, 11).sum(axis=1))


@pytest.mark.parametrize("op", ("none",) + OPS)
def test_r0_is_identity(op):
    x = _x(2)
    xr, size, state = TokenReducer(op, 0, protected=0)(x, None, x)
    assert xr is x
    np.testing.assert_array_equal(size, np.ones((2, 11, 1)))
    assert state.r == 0 and state.matching is None
    assert state.restore(x) is x
    with pytest.raises(ValueError, match="nothing was reduced"):
        state.restore(x[:, :5])


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("protected", [0, 1])
def test_restore_keeps_untouched_tokens_and_copies_removed_ones(op, protected):
    x = _x(3, n=12)
    xr, _, state = TokenReducer(op, 5, protected=protected)(x, None, x)
    y = np.asarray(state.restore(xr))
    m = state.matching
    pos = np.asarray(output_positions(m, 12))
    dst_pos = 2 * np.asarray(m.dst_idx) + 1  # B tokens sit at odd positions
    src_pos = 2 * np.asarray(m.src_idx)
    for b in range(2):
        absorbed = set(dst_pos[b])
        for p in pos[b]:  # kept tokens: their own value; untouched unless they absorbed a source
            if op == "prune" or p not in absorbed:
                np.testing.assert_array_equal(y[b, p], np.asarray(x)[b, p])
        for s, d in zip(src_pos[b], dst_pos[b], strict=True):  # removed: copy of their destination
            np.testing.assert_array_equal(y[b, s], y[b, d])
            if op == "prune":  # "copy from the nearest kept token"
                np.testing.assert_array_equal(y[b, s], np.asarray(x)[b, d])


def test_apply_runs_fn_on_fewer_tokens():
    x = _x(4, n=16)
    seen = []

    def fn(h):
        seen.append(h.shape)
        return 2 * h

    out = TokenReducer("merge_avg", 6, protected=0).apply(fn, x, x)
    assert seen == [(2, 10, 6)] and out.shape == x.shape
    xr, _, state = TokenReducer("merge_avg", 6, protected=0)(x, None, x)
    np.testing.assert_allclose(out, state.restore(2 * xr), rtol=1e-6)


def test_restore_all_chain_and_jit():
    x = _x(5, n=15)
    reducers = (TokenReducer("merge_mlerp", 5, protected=1), TokenReducer("prune", 3, protected=1))

    @jax.jit
    def run(x):
        states, h = [], x
        for red in reducers:
            h, _, st = red(h, None, h)
            states.append(st)
        return h, states

    h, states = run(x)
    assert h.shape == (2, 7, 6) and all(isinstance(s, ReductionState) for s in states)
    y = restore_all(states, h)  # states crossed the jit boundary
    assert y.shape == x.shape
    np.testing.assert_array_equal(y[:, 0], x[:, 0])  # protected CLS never moves
    assert hash(reducers[0]) == hash(TokenReducer("merge_mlerp", 5, protected=1))


def test_reducer_validation():
    with pytest.raises(ValueError, match="unknown op"):
        TokenReducer("prune_importance", 2, protected=0)
    with pytest.raises(ValueError, match="needs r=0"):
        TokenReducer("none", 2, protected=0)
    with pytest.raises(ValueError, match="mlerp_norm"):
        TokenReducer("merge_mlerp", 1, protected=0, mlerp_norm="mean")
    with pytest.raises(ValueError, match="out of range"):
        TokenReducer("merge_avg", 6, protected=1)(_x(), None, _x())  # 11 tokens: at most 5
