"""The DiT with merge/unmerge around each MLP, its sampler and FLOPs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tofu_jax import schedule as S
from tofu_jax.models import dit as D

TINY = D.DiTConfig(
    image_size=8, patch_size=2, channels=1, width=16, depth=2, num_heads=2, num_classes=3, freq_dim=16
)
OPS = ("merge_avg", "merge_mlerp", "prune")


_TRACES = []


def _fwd(p, x, t, y, schedule=None):
    _TRACES.append(schedule)
    return D.DiT(TINY).apply({"params": p}, x, t, y, schedule, mutable=["intermediates"])


# One jitted forward shared by the tests: each schedule compiles once for the whole module.
FWD = jax.jit(_fwd, static_argnames=("schedule",))


@pytest.fixture(scope="module")
def params():
    # Random values for every parameter (no compile of init): adaLN-Zero's zero inits would make
    # every block the identity.
    shapes = jax.eval_shape(lambda: D.DiT(TINY).init(jax.random.PRNGKey(0), *_inputs()))["params"]
    rng = np.random.default_rng(1)
    return jax.tree.map(lambda s: jnp.asarray(0.2 * rng.normal(size=s.shape), jnp.float32), shapes)


def _inputs(b=2, seed=0):
    x = jax.random.normal(jax.random.PRNGKey(seed), (b, 8, 8, 1))
    return x, jnp.array([5, 900][:b]), jnp.array([0, 3][:b])  # label 3 = the null label


@pytest.mark.parametrize("op", OPS)
def test_forward_shapes_and_mlp_tokens(params, op):
    sched = S.constant(TINY.depth, 5, op)
    out, state = FWD(params, *_inputs(), sched)
    assert out.shape == (2, 8, 8, 1) and np.all(np.isfinite(out))
    inter = state["intermediates"]
    for i in range(TINY.depth):
        assert inter[f"block_{i}"]["mlp_in"][0].shape == (2, TINY.num_tokens - 5, TINY.width)
    base, base_state = FWD(params, *_inputs())
    assert base_state["intermediates"]["block_0"]["mlp_in"][0].shape == (2, TINY.num_tokens, TINY.width)
    assert 0 < float(jnp.abs(out - base).max()) < 10 * float(jnp.abs(base).max())
    assert D.mlp_token_counts(TINY, sched) == [11, 11]


def test_schedule_none_equals_unreduced_forward_exactly(params):
    x, t, y = _inputs()
    base = FWD(params, x, t, y)[0]
    np.testing.assert_array_equal(FWD(params, x, t, y, S.none(TINY.depth))[0], base)
    # A block whose reducer is inactive (r=0) is bit-identical to one without a reducer.
    h = jax.random.normal(jax.random.PRNGKey(2), (2, TINY.num_tokens, TINY.width))
    c = jax.random.normal(jax.random.PRNGKey(3), (2, TINY.width))
    bp = params["block_0"]
    ref = D.DiTBlock(TINY).apply({"params": bp}, h, c)
    for op in OPS:
        np.testing.assert_array_equal(D.DiTBlock(TINY, op, 0).apply({"params": bp}, h, c), ref)


def test_one_compile_per_schedule(params):
    scheds = [
        S.none(TINY.depth),
        S.constant(TINY.depth, 5, "merge_mlerp"),
        S.constant(TINY.depth, 5, "prune"),
    ]
    for seed in range(2):
        for s in scheds:
            FWD(params, *_inputs(seed=seed), S.Schedule(s.blocks))  # an equal copy hits the cache
    for s in scheds:
        assert _TRACES.count(s) == 1, s
    assert _TRACES.count(None) <= 1


def test_flops_drop_equally_for_all_ops():
    base = D.dit_flops(TINY)
    ratios = {op: D.dit_flops(TINY, S.constant(TINY.depth, 4, op)) / base for op in OPS}
    assert len(set(ratios.values())) == 1 and 0 < ratios["prune"] < 1
    n, d, m = TINY.num_tokens, TINY.width, TINY.mlp_dim
    assert base - D.dit_flops(TINY, S.constant(TINY.depth, 4, "prune")) == pytest.approx(
        TINY.depth * (2 * 2 * 4 * d * m - 2 * (n // 2) ** 2 * TINY.head_dim)
    )


def test_invalid_schedules():
    with pytest.raises(S.ScheduleError, match="not supported"):
        D.validate_schedule(S.constant(TINY.depth, 2, "prune_importance"), TINY)
    with pytest.raises(S.ScheduleError, match="at most 8"):
        D.validate_schedule(S.constant(TINY.depth, 9, "merge_avg"), TINY)
    with pytest.raises(S.ScheduleError, match="depth"):
        D.validate_schedule(S.none(3), TINY)


def test_sampler_deterministic(params):
    noise = jax.random.normal(jax.random.PRNGKey(4), (3, 8, 8, 1))
    labels = jnp.array([0, 1, 2])
    sched = S.constant(TINY.depth, 4, "merge_mlerp")
    ddim = D.make_sampler(D.DiT(TINY), D.Diffusion(), 3)
    a, b = ddim(params, noise, labels, schedule=sched), ddim(params, noise, labels, schedule=sched)
    np.testing.assert_array_equal(a, b)
    assert a.shape == noise.shape and float(jnp.abs(a).max()) <= 1.0
    ddpm = D.make_sampler(D.DiT(TINY), D.Diffusion(), 3, eta=1.0, cfg_scale=2.0)
    k = jax.random.PRNGKey(7)
    c1, c2 = ddpm(params, noise, labels, k), ddpm(params, noise, labels, k)
    np.testing.assert_array_equal(c1, c2)
    assert not np.array_equal(c1, ddpm(params, noise, labels, jax.random.PRNGKey(8)))
    with pytest.raises(ValueError, match="PRNG key"):
        ddpm(params, noise, labels)


def test_diffusion_loss_and_timesteps(params):
    diff = D.Diffusion()
    np.testing.assert_array_equal(diff.sample_timesteps(3), [999, 500, 0])
    x0 = jnp.clip(_inputs()[0], -1, 1)
    loss = D.diffusion_loss(D.DiT(TINY), params, diff, x0, jnp.array([0, 1]), jax.random.PRNGKey(0))
    assert np.isfinite(float(loss)) and float(loss) > 0
