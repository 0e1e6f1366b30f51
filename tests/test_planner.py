"""The fidelity planner: meets the budget, never loses to ToMe on its calibration images, deterministic."""

import json

import jax
import numpy as np
import pytest

from tofu_jax import planner
from tofu_jax.errors import UserError
from tofu_jax.flops import flops_ratio
from tofu_jax.models.vit import ViTConfig, init_params

CONFIG = ViTConfig(image_size=24, patch_size=2, channels=1, num_classes=5, width=16, depth=3, mlp_dim=32,
                   num_heads=2)  # fmt: skip
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
