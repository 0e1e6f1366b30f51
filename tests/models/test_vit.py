import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import reference
from tests.helpers import random_params
from tofu_jax import schedule as S
from tofu_jax.checkpoints.common import flatten
from tofu_jax.models.vit import PRESETS, ViT, ViTConfig, init_params, make_apply, preset

TINY = ViTConfig(
    image_size=16, patch_size=4, channels=3, num_classes=5, width=32, depth=3, mlp_dim=64, num_heads=2
)


def _images(cfg, b=2, seed=0):
    return jnp.asarray(
        np.random.default_rng(seed).uniform(-1, 1, (b, cfg.image_size, cfg.image_size, cfg.channels))
    )


def _random_params(cfg, seed=0):
    return random_params(cfg, seed, 0.2)


def test_google_parameter_names():
    names = set(flatten(init_params(TINY)))
    for n in [
        "embedding/kernel",
        "cls",
        "Transformer/posembed_input/pos_embedding",
        "Transformer/encoderblock_0/LayerNorm_0/scale",
        "Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel",
        "Transformer/encoderblock_2/MultiHeadDotProductAttention_1/out/kernel",
        "Transformer/encoderblock_1/LayerNorm_2/bias",
        "Transformer/encoderblock_1/MlpBlock_3/Dense_1/kernel",
        "Transformer/encoder_norm/scale",
        "head/kernel",
    ]:
        assert n in names, n


@pytest.mark.parametrize(
    "name,count",
    [("Ti/16", 5_717_416), ("S/16", 22_050_664), ("B/16", 86_567_656), ("B/32", 88_224_232)],
)
def test_preset_parameter_counts(name, count):
    # Published ViT parameter counts (ImageNet-1k head, 224px).
    cfg = preset(name, num_classes=1000)
    images = jnp.zeros((1, 224, 224, 3))
    shapes = jax.eval_shape(lambda: ViT(cfg).init(jax.random.PRNGKey(0), images))
    assert sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(shapes)) == count
    assert name in PRESETS


def test_wrong_image_size_is_rejected():
    params = init_params(TINY)
    with pytest.raises(ValueError, match=r"images must have shape \[B, 16, 16, 3\].*got \(2, 32, 32, 3\)"):
        ViT(TINY).apply({"params": params}, jnp.zeros((2, 32, 32, 3)))


def test_impossible_schedule_is_rejected_before_tracing():
    params = init_params(TINY)
    with pytest.raises(S.ScheduleError, match=r"block 1 \(prune\) asks to remove r=7 tokens but has 10"):
        ViT(TINY).apply({"params": params}, _images(TINY), S.constant(3, 7, "prune"))


def test_one_compile_per_schedule():
    params = _random_params(TINY)
    apply = make_apply(ViT(TINY))
    sch = S.constant(3, 4, "merge_mlerp")
    for seed in range(3):
        apply(params, _images(TINY, seed=seed), sch)
    apply(params, _images(TINY), S.constant(3, 4, "merge_mlerp"))  # equal schedule: cache hit
    assert apply._cache_size() == 1
    apply(params, _images(TINY), S.constant(3, 4, "prune"))
    assert apply._cache_size() == 2


def test_intermediates_do_not_change_logits_and_expose_blocks():
    params = _random_params(TINY)
    sch = S.tofu_split(3, 4, 1)
    model = ViT(TINY)
    plain = model.apply({"params": params}, _images(TINY), sch)
    logits, state = model.apply(
        {"params": params}, _images(TINY), sch, track_sources=True, mutable=["intermediates"]
    )
    np.testing.assert_allclose(np.asarray(plain), np.asarray(logits), rtol=1e-6)
    inter = state["intermediates"]
    blk = inter["Transformer"]["encoderblock_2"]
    assert blk["mlp_in"][0].shape == (2, 17 - 12, 32)
    assert blk["metric"][0].shape == (2, 17 - 8, 16)
    assert inter["sources"][0].shape == (2, 5, 17)


@pytest.mark.parametrize("op", ["prune", "merge_avg", "merge_mlerp"])
def test_reduced_forward_matches_layer_by_layer_reference(op):
    """Run the model's blocks by hand with the NumPy reference doing the reduction."""
    params = _random_params(TINY)
    model = ViT(TINY)
    sch = S.constant(3, 3, op, prop_attn=False)
    _, state = model.apply({"params": params}, _images(TINY), sch, mutable=["intermediates"])
    inter = state["intermediates"]["Transformer"]
    for i in range(3):
        blk = inter[f"encoderblock_{i}"]
        x = np.asarray(blk["attn_out"][0])
        metric = np.asarray(blk["metric"][0])
        sizes = (
            np.ones(x.shape[:2] + (1,)) if i == 0 else np.asarray(inter[f"encoderblock_{i - 1}"]["size"][0])
        )
        plan = reference.matching(metric, 3, 1)
        ref_x, ref_s = reference.reduce(x, sizes, plan, op)
        np.testing.assert_allclose(np.asarray(blk["mlp_in"][0]), ref_x, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.asarray(blk["size"][0]), ref_s, rtol=1e-6)


def test_hand_checked_two_token_merge():
    """CLS + 2 patches: the only possible merge folds patch 1 (A) into patch 2 (B)."""
    cfg = TINY.replace(image_size=8, patch_size=4, depth=1)  # 4 patches + CLS = 5 tokens
    params = _random_params(cfg)
    sch = S.constant(1, 2, "merge_avg", prop_attn=False)
    _, state = ViT(cfg).apply({"params": params}, _images(cfg), sch, mutable=["intermediates"])
    blk = state["intermediates"]["Transformer"]["encoderblock_0"]
    x, out = np.asarray(blk["attn_out"][0]), np.asarray(blk["mlp_in"][0])
    size = np.asarray(blk["size"][0])
    # A = {CLS, t2, t4}, B = {t1, t3}; CLS stays, t2 and t4 each fold into a B token.
    np.testing.assert_allclose(out[:, 0], x[:, 0])
    assert size[:, :, 0].sum(1).tolist() == [5.0, 5.0]
    np.testing.assert_allclose(
        out[:, 1:].sum(1) * 1.0, (x[:, 1:] * 1.0).sum(1) - (out[:, 1:] * (size[:, 1:] - 1)).sum(1), atol=1e-5
    )


def test_distilled_and_gap_variants_run_with_reduction():
    for cfg in (TINY.replace(distilled=True), TINY.replace(classifier="gap", fc_norm=True)):
        params = _random_params(cfg)
        out = ViT(cfg).apply({"params": params}, _images(cfg), S.constant(3, 3, "merge_mlerp"))
        assert out.shape == (2, 5) and np.all(np.isfinite(np.asarray(out)))


def test_bf16_forward_close_to_fp32():
    params = _random_params(TINY)
    sch = S.tofu_split(3, 3, 1)
    f32 = ViT(TINY).apply({"params": params}, _images(TINY), sch)
    b16 = ViT(TINY.replace(dtype="bfloat16")).apply({"params": params}, _images(TINY), sch)
    assert b16.dtype == jnp.float32
    assert np.max(np.abs(np.asarray(f32) - np.asarray(b16))) < 0.15 * np.max(np.abs(np.asarray(f32))) + 0.05
