"""Analytic FLOPs of a ViT under a reduction schedule (docs/algorithms.md §7).

Counted as multiply-adds x 2 (the convention of XLA's ``cost_analysis()['flops']``) for the matrix
products only: per block with ``N`` tokens entering attention and ``N'`` leaving the reduction,
``2 * (4 N D^2 + 2 N^2 D)`` for attention (q, k, v, out projections, scores and weighted sum),
``2 * (N/2)^2 C`` for bipartite matching (C = head dim of the averaged keys), ``2 r (N - r) C`` for
importance-guided merging (r sources against N - r kept tokens), and
``2 * 2 N' D M`` for the MLP. Plus patch embedding ``2 N0 p^2 c D`` and the head ``2 D K``.
LayerNorm, softmax, GELU and the merges are elementwise and omitted; XLA counts them, which is
why its figure is a few percent higher (see tests/test_flops.py).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tofu_jax.models.vit import ViTConfig
from tofu_jax.reduction import REDUCTIONS
from tofu_jax.schedule import Schedule
from tofu_jax.schedule import none as no_reduction


@dataclasses.dataclass(frozen=True)
class FlopsReport:
    total: float  # FLOPs per image
    embed: float
    blocks: tuple[float, ...]
    head: float
    tokens: tuple[int, ...]  # tokens entering each block, then the final count

    @property
    def gflops(self) -> float:
        return self.total / 1e9


def block_flops(n_in, n_out, config: ViTConfig, op: str = "none", metric: str = "keys"):
    """FLOPs of one block with ``n_in`` tokens at attention and ``n_out`` at the MLP.

    ``n_in`` and ``n_out`` may be NumPy arrays (the planner tabulates every count at once).
    """
    d, m = config.width, config.mlp_dim
    n_in, n_out = np.asarray(n_in, np.int64), np.asarray(n_out, np.int64)
    macs = 4 * n_in * d * d + 2 * n_in * n_in * d + 2 * n_out * d * m
    c = config.head_dim if metric == "keys" else d
    flops = 2.0 * (macs + REDUCTIONS[op].selection_macs(n_in, n_out, c))
    return flops if flops.ndim else float(flops)


def model_flops(config: ViTConfig, schedule: Schedule | None = None) -> FlopsReport:
    """Per-image FLOPs of ``config`` under ``schedule`` (validated against the model)."""
    schedule = schedule if schedule is not None else no_reduction(config.depth)
    counts = schedule.validate(config.depth, config.num_tokens, config.num_prefix)
    embed = 2.0 * config.num_patches * config.patch_size**2 * config.channels * config.width
    blocks = tuple(
        block_flops(counts[i], counts[i + 1], config, b.op, schedule.metric)
        for i, b in enumerate(schedule.blocks)
    )
    heads = 1 + int(config.distilled)
    features = config.representation_size or config.width
    head = 2.0 * features * config.num_classes * heads
    if config.representation_size:  # the pre-logits Dense D -> R before each head
        head += 2.0 * config.width * config.representation_size * heads
    return FlopsReport(embed + sum(blocks) + head, embed, blocks, head, tuple(counts))


def flops_ratio(config: ViTConfig, schedule: Schedule) -> float:
    """FLOPs of ``schedule`` divided by the unreduced model's."""
    return model_flops(config, schedule).total / model_flops(config).total
