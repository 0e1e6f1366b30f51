"""tofu_jax: Token Fusion (prune or MLERP-merge ViT tokens per block) in JAX/Flax.

The public API, re-exported. Submodules: ``matching``, ``merging``, ``scoring``, ``linearity`` (pure
ops), ``schedule``, ``flops``, ``profiler``, ``planner``, ``models``, ``checkpoints``, ``data``.
"""

from tofu_jax.attention import attend, cls_attention
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
from tofu_jax.schedule import BlockReduction, Schedule, ScheduleError
from tofu_jax.scoring import gradient_saliency, key_norm

__version__ = "0.1.0"

__all__ = [
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
