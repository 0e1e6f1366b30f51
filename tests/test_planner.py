"""The planners: the fidelity planner meets the budget, never loses to ToMe on its calibration images and is
deterministic; the profile planners (per_block, split) and the budget allocation meet their budgets."""

import json

import jax
import numpy as np
import pytest

from tests.helpers import PROFILED
from tofu_jax import planner
from tofu_jax import schedule as S
from tofu_jax.errors import UserError
from tofu_jax.flops import flops_ratio, model_flops
from tofu_jax.models.vit import ViTConfig, init_params

CONFIG = ViTConfig(image_size=24, patch_size=2, channels=1, num_classes=5, width=16, depth=3, mlp_dim=32,
                   num_heads=2)  # fmt: skip
BUNDLED_SHAPE = ViTConfig(
    image_size=28, patch_size=2, channels=1, num_classes=10, width=96, depth=12, mlp_dim=384, num_heads=3
)
SOLVER = planner.SolverConfig(fractions=(0.25, 0.5), probe_images=8, search_evals=6)


@pytest.fixture(scope="module")
def model():
    params = init_params(CONFIG, 0)
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    params = jax.tree_util.tree_unflatten(
        tree, [p + 0.3 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys, strict=True)]
    )
    images = np.random.default_rng(0).uniform(-1, 1, (8, 24, 24, 1)).astype(np.float32)
    images[:, :12] = -1.0  # a uniform half, as in a dark background: redundant tokens to merge
    return params, images


@pytest.fixture(scope="module")
def plan40(model):
    params, images = model
    return planner.plan(None, CONFIG, 0.4, params=params, images=images, solver=SOLVER)


def test_meets_the_budget_within_one_percent(plan40):
    assert 0.59 <= flops_ratio(CONFIG, plan40.schedule) <= 0.6


def test_never_worse_than_tome_on_calibration_images(plan40):
    cands = plan40.info["candidates"]
    assert {"tome", "tome_decreasing", "merge_mlerp", "prune", "half_split", "solver"} <= set(cands)
    assert plan40.info["kl"] <= min(c["kl"] for c in cands.values())
    assert 0 <= plan40.info["agreement"] <= 1


def test_deterministic_and_json(model, plan40):
    params, images = model
    again = planner.plan(None, CONFIG, 0.4, params=params, images=images, solver=SOLVER)
    assert again.schedule == plan40.schedule
    meta = json.loads(json.dumps(plan40.meta(CONFIG)))
    assert meta["mode"] == "fidelity" and meta["kl"] == plan40.info["kl"]
    assert len(meta["probe"]["kl"]) == CONFIG.depth


def test_baselines_are_tome_recipes():
    base = planner.baseline_schedules(CONFIG, 0.4)
    assert {b.op for b in base["tome"].blocks} <= {"merge_avg", "none"}
    rs = [b.r for b in base["tome_decreasing"].blocks]
    assert rs == sorted(rs, reverse=True) and rs[0] > rs[-1]
    assert flops_ratio(CONFIG, base["tome_decreasing"]) <= 0.6


def test_bad_requests(model):
    params, images = model
    with pytest.raises(UserError, match="needs the model's params and calibration images"):
        planner.plan(None, CONFIG, 0.4)
    with pytest.raises(UserError, match="needs a linearity profile"):
        planner.plan(None, CONFIG, 0.4, mode="per_block")
    with pytest.raises(UserError, match="subset"):
        planner.SolverConfig(ops=("melt",))
    with pytest.raises(UserError, match=r"\(0, 0.5\]"):
        planner.SolverConfig(fractions=(0.9,))
    with pytest.raises(planner.BudgetError, match="budget must be"):
        planner.plan(None, CONFIG, 1.2, params=params, images=images)


# --- the profile planners (``profile``: the shared fixture in tests/conftest.py) and the allocation ------


def test_plan_meets_budget_and_round_trips(profile, tmp_path):
    p = planner.plan(profile, PROFILED, 0.3, mode="per_block")
    assert flops_ratio(PROFILED, p.schedule) <= 0.7
    path = tmp_path / "s.json"
    p.schedule.to_json(path, meta=p.meta(PROFILED))
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
    p = planner.plan(profile, PROFILED, 0.3, mode="per_block", selection="importance")
    ops = {b.op for b in p.schedule.blocks} - {"none"}
    assert ops <= {"prune_importance", "merge_importance_mlerp"} and ops
    assert flops_ratio(PROFILED, p.schedule) <= 0.7
    with pytest.raises(ValueError, match="selection must be one of"):
        planner.with_selection(["prune"], "random")
