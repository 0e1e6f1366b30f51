"""The fixed-shape emulator gives the static program's logits for any schedule."""

import jax
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tofu_jax.emulate import Emulator, fidelity
from tofu_jax.matching import max_reduction
from tofu_jax.models.vit import ViT, ViTConfig, init_params, make_apply
from tofu_jax.reduction import OPS
from tofu_jax.schedule import BlockReduction, Schedule, none

_TINY = dict(
    image_size=16, patch_size=2, channels=1, num_classes=5, width=32, depth=3, mlp_dim=64, num_heads=2
)
# (model, global schedule options): each case compiles its own programs, so options vary by case.
CASES = {
    "cls": (ViTConfig(**_TINY), {}),
    "distilled": (ViTConfig(**_TINY, distilled=True), {"prop_attn": False, "mlerp_norm": "weighted_mean"}),
    "registers": (ViTConfig(**_TINY, num_registers=3), {"metric": "tokens"}),
    "gap": (ViTConfig(**_TINY, classifier="gap", cls_token=False), {}),
}


def _random_params(config, seed=0):
    params = init_params(config, seed)
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(leaves))
    noisy = [p + 0.2 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys, strict=True)]
    return jax.tree_util.tree_unflatten(tree, noisy)


@pytest.fixture(scope="module")
def setups():
    out = {}
    for name, (config, _) in CASES.items():
        model = ViT(config)
        params = _random_params(config)
        images = jax.random.normal(jax.random.PRNGKey(7), (4, 16, 16, 1))
        out[name] = (config, params, images, make_apply(model), Emulator(model, params, images, bucket=32))
    return out


@st.composite
def schedules(draw, config, options):
    n, protected, blocks = config.num_tokens, config.num_prefix, []
    for _ in range(config.depth):
        op = draw(st.sampled_from(OPS))
        limit = max_reduction(n, protected) if "importance" not in op else n - protected - 1
        r = 0 if op == "none" else draw(st.integers(0, limit))
        blocks.append(BlockReduction(op if r else "none", r))
        n -= r
    return Schedule(tuple(blocks), **options)


@pytest.mark.parametrize("name", list(CASES))
@settings(max_examples=3, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_emulation_equals_static_program(setups, name, data):
    config, params, images, apply, emulator = setups[name]
    schedule = data.draw(schedules(config, CASES[name][1]))
    want = np.asarray(apply(params, images, schedule))
    got = emulator.logits(schedule)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_prefix_cache_reuses_states(setups):
    config, params, images, apply, emulator = setups["cls"]
    a = Schedule((BlockReduction("merge_mlerp", 10), BlockReduction("prune", 5), BlockReduction()))
    b = Schedule(a.blocks[:2] + (BlockReduction("prune_importance", 7),))
    np.testing.assert_allclose(emulator.logits(a), np.asarray(apply(params, images, a)), atol=1e-5)
    np.testing.assert_allclose(emulator.logits(b), np.asarray(apply(params, images, b)), atol=1e-5)


def test_fidelity_is_zero_for_identical_logits():
    logits = np.random.default_rng(0).normal(size=(8, 5))
    f = fidelity(logits, logits)
    assert abs(f["kl"]) < 1e-6 and f["agreement"] == 1.0
    worse = fidelity(logits, logits[::-1])
    assert worse["kl"] > 0.01 and worse["agreement"] < 1.0


def test_emulator_refuses_invalid_schedule(setups):
    from tofu_jax.schedule import ScheduleError

    config, _, _, _, emulator = setups["cls"]
    with pytest.raises(ScheduleError, match="at most"):
        emulator.logits(Schedule((BlockReduction("prune", 60),) + none(2).blocks))
