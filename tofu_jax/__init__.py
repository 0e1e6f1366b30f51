"""tofu_jax: Token Fusion (prune or MLERP-merge ViT tokens per block) in JAX/Flax.

The main entry points, re-exported. Submodules, one job each:

* pure ops: ``matching``, ``merging``, ``scoring``, ``attention``, ``linearity``; ``reduction`` (the
  registry of reduction ops) and ``masked`` (their fixed-shape variants);
* models: ``models.vit``, ``models.dit``, ``blocks`` (ToFu for any Flax block), ``checkpoints``;
* schedules: ``schedule``, ``flops``, ``profiler``, ``emulate``, ``planner``;
* running: ``data``, ``parallel`` (meshes), ``evaluate``, ``train``, ``finetune``, ``compare``,
  ``pipeline`` (the main job as functions), ``export``, ``viz``, ``cli``.
"""

from tofu_jax.attention import ToFuAttention, ToFuAttentionNNX, attend, cls_attention
from tofu_jax.blocks import TokenReducer
from tofu_jax.errors import UserError
from tofu_jax.linearity import interpolation_errors, linearity
from tofu_jax.matching import Matching, bipartite_soft_matching, max_reduction
from tofu_jax.merging import (
    importance_matching,
    merge_avg,
    merge_importance,
    merge_mlerp,
    merge_sources,
    prune,
    prune_importance,
    prune_unimportant,
    size_bias,
    unmerge,
)
from tofu_jax.models.loading import load_model
from tofu_jax.models.vit import ViT, ViTConfig, make_apply
from tofu_jax.planner import allocate, plan
from tofu_jax.reduction import OPS, REDUCTIONS
from tofu_jax.schedule import BlockReduction, Schedule, ScheduleError
from tofu_jax.scoring import gradient_saliency, key_norm

__version__ = "0.1.0"

__all__ = [
    "ToFuAttention",
    "ToFuAttentionNNX",
    "OPS",
    "REDUCTIONS",
    "TokenReducer",
    "UserError",
    "ViT",
    "ViTConfig",
    "allocate",
    "load_model",
    "make_apply",
    "plan",
    "BlockReduction",
    "Matching",
    "Schedule",
    "attend",
    "ScheduleError",
    "bipartite_soft_matching",
    "cls_attention",
    "gradient_saliency",
    "importance_matching",
    "interpolation_errors",
    "key_norm",
    "linearity",
    "max_reduction",
    "merge_avg",
    "merge_importance",
    "merge_mlerp",
    "merge_sources",
    "prune",
    "prune_importance",
    "prune_unimportant",
    "size_bias",
    "unmerge",
]
