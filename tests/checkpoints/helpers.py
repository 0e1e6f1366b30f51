"""Shared sizes and random parameters for the checkpoint tests."""

from __future__ import annotations

import functools

import numpy as np

from tofu_jax.checkpoints import load
from tofu_jax.models.vit import ViTConfig

TINY = dict(image_size=32, patch_size=8, width=64, depth=2, mlp_dim=128, num_heads=4, num_classes=10)


@functools.cache
def _shapes(config: ViTConfig) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in load.model_shapes(config).items()}


def random_flat(config: ViTConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """Random values in every parameter of ``config`` (biases, CLS and head included), canonical names.

    Built from ``jax.eval_shape``: nothing is compiled.
    """
    rng = np.random.default_rng(seed)
    return {k: rng.normal(scale=0.5, size=s).astype(np.float32) for k, s in _shapes(config).items()}
