import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import random_params
from tofu_jax import planner
from tofu_jax import schedule as S
from tofu_jax.flops import flops_ratio, model_flops
from tofu_jax.linearity import linearity
from tofu_jax.models.vit import ViTConfig
from tofu_jax.profiler import Profile, profile_model

TINY = ViTConfig(
    image_size=16, patch_size=2, channels=1, num_classes=4, width=16, depth=4, mlp_dim=32, num_heads=2
)
BUNDLED_SHAPE = ViTConfig(
    image_size=28, patch_size=2, channels=1, num_classes=10, width=96, depth=12, mlp_dim=384, num_heads=3
)


def test_linearity_of_linear_and_nonlinear_functions():
    rng = np.random.default_rng(0)
    x1, x2 = (jnp.asarray(rng.normal(size=(64, 8))) for _ in range(2))
    w = jnp.asarray(rng.normal(size=(8, 5)))
    assert float(linearity(lambda x: x @ w + 1.0, x1, x2)) < 1e-10
    assert float(linearity(lambda x: jax.nn.relu(x @ w), x1, x2)) > 0.02
    assert float(linearity(lambda x: (x @ w) ** 2, x1, x2)) > 0.05
    with pytest.raises(ValueError, match="x1 and x2"):
        linearity(lambda x: x, x1, x2[:3])


def _scaled_params(scales):
    """Random tiny model whose block i has its MLP's first layer scaled by scales[i]."""
    params = random_params(TINY, 0, 0.5, noise_seed=3)
    for i, s in enumerate(scales):
        mlp = params["Transformer"][f"encoderblock_{i}"]["MlpBlock_3"]
        mlp["Dense_0"]["kernel"] = mlp["Dense_0"]["kernel"] * s
        mlp["Dense_0"]["bias"] = mlp["Dense_0"]["bias"] * s
        mlp["Dense_1"]["kernel"] = mlp["Dense_1"]["kernel"] / s
    return params


@pytest.fixture(scope="module")
def profile():
    # Blocks 0, 1: GELU driven far into its kinks (non-linear); blocks 2, 3: GELU's near-linear core.
    params = _scaled_params([40.0, 40.0, 1e-3, 1e-3])
    images = np.random.default_rng(1).uniform(-1, 1, (16, 16, 16, 1)).astype(np.float32)
    return profile_model(TINY, params, images, r_profile=8, batch_size=8)


def test_profile_separates_linear_from_nonlinear_blocks(profile, tmp_path):
    L = profile.metric("L_mlp_matched")
    assert max(L[2:]) < 0.5 * min(L[:2]), L
    assert all(np.isfinite(profile.metric(m)).all() for m in ("L_block_random", "cos_random", "norm_cv"))
    ops, info = planner.choose_ops(profile, "per_block")
    assert ops == ["prune", "prune", "merge_mlerp", "merge_mlerp"], (ops, info)
    ops, info = planner.choose_ops(profile, "split")
    assert info["split"] == 2
    path = tmp_path / "p.json"
    profile.save(path)
    assert Profile.load(path) == profile


def test_plan_meets_budget_and_round_trips(profile, tmp_path):
    p = planner.plan(profile, TINY, 0.3, mode="per_block")
    assert flops_ratio(TINY, p.schedule) <= 0.7
    path = tmp_path / "s.json"
    p.schedule.to_json(path, meta=p.meta(TINY))
    assert S.Schedule.from_json(path) == p.schedule


@pytest.mark.parametrize("budget", [0.2, 0.4, 0.5])
@pytest.mark.parametrize(
    "ops", [["merge_mlerp"] * 12, ["prune"] * 6 + ["merge_mlerp"] * 6, ["merge_avg"] * 12]
)
def test_allocation_hits_budget_within_one_percent_on_bundled_shape(budget, ops):
    sched = planner.allocate(BUNDLED_SHAPE, ops, budget)
    ratio = flops_ratio(BUNDLED_SHAPE, sched)
    assert 1 - budget - 0.01 <= ratio <= 1 - budget, (ratio, sched.describe())
    target = model_flops(BUNDLED_SHAPE).gflops * (1 - budget)
    by_target = planner.allocate(BUNDLED_SHAPE, ops, target_gflops=target)
    assert by_target == sched


def test_impossible_budgets_are_reported():
    with pytest.raises(planner.BudgetError, match="at most"):
        planner.allocate(BUNDLED_SHAPE, ["merge_mlerp"] * 12, 0.95)
    with pytest.raises(planner.BudgetError, match=r"budget must be .* in \[0, 1\)"):
        planner.allocate(BUNDLED_SHAPE, ["merge_mlerp"] * 12, 1.5)
    with pytest.raises(planner.BudgetError, match="exactly one"):
        planner.allocate(BUNDLED_SHAPE, ["merge_mlerp"] * 12)


def test_importance_selection_maps_ops_and_meets_budget(profile):
    p = planner.plan(profile, TINY, 0.3, mode="per_block", selection="importance")
    ops = {b.op for b in p.schedule.blocks} - {"none"}
    assert ops <= {"prune_importance", "merge_importance_mlerp"} and ops
    assert flops_ratio(TINY, p.schedule) <= 0.7
    with pytest.raises(ValueError, match="selection must be one of"):
        planner.with_selection(["prune"], "random")
