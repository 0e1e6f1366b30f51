import jax
import jax.numpy as jnp
import pytest

from tofu_jax import flops
from tofu_jax import schedule as S
from tofu_jax.models.vit import ViT, ViTConfig

CFG = ViTConfig(
    image_size=32, patch_size=4, channels=3, num_classes=10, width=64, depth=4, mlp_dim=256, num_heads=4
)


def xla_flops(config, schedule):
    images = jnp.zeros((1, config.image_size, config.image_size, config.channels))
    model = ViT(config)
    params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), images))
    fn = jax.jit(lambda p, x: model.apply(p, x, schedule))
    return fn.lower(params, images).compile().cost_analysis()["flops"]


@pytest.mark.parametrize(
    "schedule",
    [
        None,
        S.constant(4, 10, "merge_avg"),
        S.tofu_split(4, 12, 2),
        S.from_list(["prune", "none", "merge_mlerp", "prune"], [20, 0, 8, 4]),
    ],
)
def test_analytic_flops_match_xla_within_a_few_percent(schedule):
    ours = flops.model_flops(CFG, schedule).total
    theirs = xla_flops(CFG, schedule)
    # XLA also counts LayerNorm, softmax, GELU and merge arithmetic: a few percent above ours.
    assert 0.0 <= (theirs - ours) / theirs < 0.08, (ours, theirs)


def test_reduction_lowers_flops_and_token_counts():
    sch = S.constant(4, 10, "merge_mlerp")
    rep = flops.model_flops(CFG, sch)
    assert rep.tokens == (65, 55, 45, 35, 25)
    assert flops.flops_ratio(CFG, sch) < 0.75
    assert flops.model_flops(CFG).tokens == (65,) * 5


def test_flops_rejects_impossible_schedule():
    with pytest.raises(S.ScheduleError, match="block 2 .merge_avg. asks to remove r=20 tokens but has 25"):
        flops.model_flops(CFG, S.constant(4, 20, "merge_avg"))
