"""The main job's library functions, called from Python as the CLI calls them."""

import json

import numpy as np
import pytest

from tests import helpers
from tests.helpers import random_params, write_fashion_idx
from tofu_jax import data, pipeline
from tofu_jax.flops import flops_ratio
from tofu_jax.schedule import ScheduleError

TINY = helpers.TINY.replace(input_norm="inception")


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory):
    return write_fashion_idx(tmp_path_factory.mktemp("pipeline") / "data", train=64, test=24)


def test_calibration_images_are_the_cli_draw(idx_dir):
    calib = pipeline.calibration_images("fashion_mnist_idx", TINY, count=16, seed=3, data_dir=idx_dir)
    again = data.load_split(
        "fashion_mnist_idx", "train", TINY, limit=16, seed=3, data_dir=idx_dir, labelled=False
    )[0]
    assert calib.shape == (16, 28, 28, 1) and calib.dtype == np.float32
    np.testing.assert_array_equal(calib, again)
    other = pipeline.calibration_images("fashion_mnist_idx", TINY, count=16, seed=4, data_dir=idx_dir)
    assert not np.array_equal(calib, other)


def test_plan_meets_the_budget_from_the_profile(idx_dir):
    params = random_params(TINY)
    calib = pipeline.calibration_images("fashion_mnist_idx", TINY, count=8, data_dir=idx_dir)
    lines = []
    p = pipeline.plan(TINY, params, 0.3, calib, mode="per_block", log=lines.append)
    assert flops_ratio(TINY, p.schedule) == pytest.approx(0.7, abs=0.02)
    assert any("profiling linearity" in line for line in lines)


def test_run_with_a_given_schedule_writes_the_results(idx_dir, tmp_path):
    params = random_params(TINY)
    test_x, test_y = data.open_eval_set("fashion_mnist_idx", None, TINY, limit=16, data_dir=idx_dir)
    result = pipeline.run(
        TINY, params, test_x, test_y, None, budget=0.3, schedule="merge_mlerp:3x3", out_dir=tmp_path,
        batch_size=8, bench_runs=1,
    )  # fmt: skip
    assert [r["name"] for r in result["rows"]] == ["baseline", "tofu", "tome"]
    assert result["planner"] == {"mode": "file", "path": "merge_mlerp:3x3"}
    assert json.loads((tmp_path / "results.json").read_text())["num_examples"] == 16
    assert (tmp_path / "tofu_schedule.json").exists() and not (tmp_path / "profile.json").exists()
    with pytest.raises(ScheduleError, match="at most"):
        pipeline.load_schedule("merge_mlerp:9x3", TINY)


def test_plots_are_skipped_without_matplotlib(monkeypatch, tmp_path):
    monkeypatch.setattr(pipeline.importlib.util, "find_spec", lambda name: None)
    said = []
    assert pipeline.draw(lambda *a: pytest.fail("drew"), tmp_path / "x.png", log=said.append) is False
    assert "tofu_jax[plots]" in said[0]
