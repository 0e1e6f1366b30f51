"""Bad arrays and arguments through the Python API: the documented error, or finite outputs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.conftest import CONFIG
from tofu_jax import matching, merging
from tofu_jax.blocks import TokenReducer
from tofu_jax.data.batching import batches
from tofu_jax.errors import ConfigError, InputError, NonFiniteError, UserError
from tofu_jax.evaluate import accuracy, check_images
from tofu_jax.models.vit import ViT, init_params, make_apply
from tofu_jax.schedule import ScheduleError, from_list


@pytest.fixture(scope="module")
def model():
    return make_apply(ViT(CONFIG)), init_params(CONFIG, 0)


def _apply(model, images, schedule=None):
    apply, params = model
    return apply(params, images, schedule)


@pytest.mark.parametrize(
    "images,needle",
    [
        (np.zeros((2, 28, 28, 1), np.uint8), "floating point"),
        (np.zeros((2, 28, 28, 1), np.int32), "floating point"),
        (np.zeros((2, 28, 28, 3), np.float32), "shape"),
        (np.zeros((2, 32, 32, 1), np.float32), "shape"),
        (np.zeros((28, 28, 1), np.float32), "shape"),
    ],
)
def test_images_of_wrong_dtype_or_shape(model, images, needle):
    with pytest.raises(InputError, match=needle):
        _apply(model, jnp.asarray(images))


@pytest.mark.parametrize(
    "fill,needle",
    [(np.nan, "NaN or Inf"), (np.inf, "NaN or Inf"), (255.0, "raw pixels"), (-30.0, "raw pixels")],
)
def test_host_side_image_checks(fill, needle):
    images = np.zeros((2, 28, 28, 1), np.float32)
    images[1, 3, 4, 0] = fill
    with pytest.raises(InputError, match=needle):
        check_images(images)


def test_accuracy_refuses_raw_pixels_before_running(model):
    _, params = model
    images = np.random.default_rng(0).integers(0, 256, (4, 28, 28, 1)).astype(np.float32)
    with pytest.raises(InputError, match="batch 0"):
        accuracy(CONFIG, params, batches(images, np.zeros(4, int), 4))


def test_nan_logits_name_the_schedule(model):
    _, params = model
    broken = jax.tree_util.tree_map(lambda x: x, params)
    broken["head"] = {**params["head"], "bias": params["head"]["bias"] * np.nan}  # as a broken checkpoint
    sched = from_list(["merge_mlerp"] * 3, [2, 2, 2])
    images = np.zeros((4, 28, 28, 1), np.float32)
    with pytest.raises(NonFiniteError, match=r"4 examples with schedule merge_mlerp:2x3"):
        accuracy(CONFIG, broken, [(images, np.zeros(4, int), 4)], sched)
    assert issubclass(NonFiniteError, FloatingPointError)


@pytest.mark.parametrize("op", ["prune", "merge_avg", "merge_mlerp"])
def test_zero_images_give_finite_logits(model, op):
    sched = from_list([op] * 3, [2, 2, 2])
    assert np.isfinite(np.asarray(_apply(model, jnp.zeros((2, 28, 28, 1)), sched))).all()


@given(log_scale=st.floats(-30, 30), r=st.integers(1, 8), zero=st.booleans())
def test_merges_stay_finite_for_any_token_norm(log_scale, r, zero):
    x = jax.random.normal(jax.random.PRNGKey(r), (2, 17, 8)) * (10.0**log_scale)
    if zero:
        x = x.at[:, 1:5].set(0.0)
    m = matching.bipartite_soft_matching(x, r, protected=1)
    for merge in (merging.prune, merging.merge_avg, merging.merge_mlerp):
        out, size = merge(x, None, m)
        assert np.isfinite(np.asarray(out)).all() and np.isfinite(np.asarray(size)).all()


@given(rs=st.lists(st.integers(0, 20), min_size=3, max_size=3), op=st.sampled_from(["prune", "merge_mlerp"]))
def test_schedules_that_remove_too_many_tokens(rs, op):
    n, protected, too_many = CONFIG.num_tokens, CONFIG.num_prefix, False
    for r in rs:  # the bipartite limit, written out independently of the library
        too_many |= r > (n - protected) // 2
        n -= r
    sched = from_list([op] * 3, rs)
    if too_many:
        with pytest.raises(ScheduleError, match="at most"):
            sched.validate(CONFIG.depth, CONFIG.num_tokens, CONFIG.num_prefix)
    else:
        sched.validate(CONFIG.depth, CONFIG.num_tokens, CONFIG.num_prefix)


@pytest.mark.parametrize("r", [-1, 9, 100])
def test_ops_refuse_r_out_of_range(r):
    x = jnp.ones((1, 17, 4))
    with pytest.raises(UserError):
        matching.bipartite_soft_matching(x, r, protected=1)


def test_token_reducer_needs_protected():
    with pytest.raises(ConfigError, match="protected="):
        TokenReducer("merge_mlerp", 4)
    with pytest.raises(ConfigError, match="protected must be a non-negative int"):
        TokenReducer("merge_mlerp", 4, protected=-1)


def test_api_arguments_outside_their_range():
    from tofu_jax import planner
    from tofu_jax.export import export_model
    from tofu_jax.finetune import FinetuneConfig
    from tofu_jax.models.vit import preset
    from tofu_jax.profiler import BlockProfile, Profile

    with pytest.raises(UserError, match="ckpt_every"):
        FinetuneConfig(ckpt_every=0)
    with pytest.raises(UserError, match="learning_rate"):
        FinetuneConfig(learning_rate=-1.0)
    with pytest.raises(ConfigError, match="unknown ViTConfig fields"):
        preset("B/16", foo=1)
    with pytest.raises(UserError, match="platforms"):
        export_model(CONFIG, None, None, 2, platforms=("gpu",))
    with pytest.raises(ConfigError, match="protected must be a non-negative int"):
        TokenReducer("prune", 2, protected=True)
    with pytest.raises(UserError, match="budget"):
        planner.check_budget(float("nan"))
    with pytest.raises(UserError, match="target_gflops"):
        planner.check_budget(None, float("nan"))
    block = BlockProfile(0, *([0.1] * 9))
    profile = Profile(CONFIG.to_dict(), 4, 2, (0.5,), (block,) * 3)
    with pytest.raises(UserError, match="unknown profile metric 'nope'"):
        planner.plan(profile, CONFIG, 0.3, mode="per_block", metric="nope")


def test_more_api_arguments_of_the_wrong_type():
    from tofu_jax import planner
    from tofu_jax.export import export_model
    from tofu_jax.finetune import FinetuneConfig
    from tofu_jax.models.dit import DiTConfig

    with pytest.raises(UserError, match="FinetuneConfig.steps must be an integer"):
        FinetuneConfig(steps="10")
    with pytest.raises(UserError, match="budget must be a number"):
        planner.check_budget("0.5")
    with pytest.raises(UserError, match="platforms"):
        export_model(CONFIG, None, None, 2, platforms=None)
    with pytest.raises(UserError, match="DiTConfig.patch_size must be a positive integer"):
        DiTConfig(patch_size=0)
    with pytest.raises(UserError, match="protected must be a non-negative int"):
        merging.importance_keep_indices(jnp.ones((1, 9)), 2, protected=-3)
    with pytest.raises(UserError, match="out of range"):
        merging.importance_keep_indices(jnp.ones((1, 9)), True)


def test_calibration_and_training_inputs_are_checked(model):
    from tofu_jax.finetune import FinetuneConfig, finetune
    from tofu_jax.profiler import profile_model

    _, params = model
    raw = np.full((4, 28, 28, 1), 200.0, np.float32)
    with pytest.raises(InputError, match="calibration images"):
        profile_model(CONFIG, params, raw)
    good = np.zeros((4, 28, 28, 1), np.float32)
    with pytest.raises(InputError, match="training images"):
        finetune(CONFIG, params, None, raw, np.zeros(4, int), FinetuneConfig(steps=1, batch_size=2))
    with pytest.raises(UserError, match="outside the model's 10 classes"):
        finetune(CONFIG, params, None, good, np.full(4, 12), FinetuneConfig(steps=1, batch_size=2))


def test_environment_and_saved_files(tmp_path, monkeypatch):
    from tofu_jax import attention, compile_cache
    from tofu_jax.parallel import initialize_distributed

    monkeypatch.setenv("JAX_NUM_PROCESSES", "two")
    with pytest.raises(UserError, match="JAX_NUM_PROCESSES must be an integer"):
        initialize_distributed()
    with pytest.raises(UserError, match="compile cache directory is empty"):
        compile_cache.enable("  ")
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match="cannot use"):
        compile_cache.enable(str(tmp_path / "file" / "cache"))
    q = jnp.ones((1, 5, 2, 8))
    monkeypatch.setenv(attention.IMPLEMENTATION_ENV, "cudnn")
    with pytest.raises(ConfigError, match="needs a GPU"):
        attention.attend(q, q, q)
    monkeypatch.setenv(attention.IMPLEMENTATION_ENV, "fast")
    with pytest.raises(ConfigError, match="auto, xla or cudnn"):
        attention.attend(q, q, q)
