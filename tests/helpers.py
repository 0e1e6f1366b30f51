"""Shared test fixtures: random, non-degenerate parameters for tiny models."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np

from tofu_jax.data.idx import write_idx
from tofu_jax.models.vit import ViTConfig, init_params


def random_params(
    config: ViTConfig, seed: int = 0, scale: float = 0.3, noise_seed: int | None = None
) -> dict:
    """Initialised parameters plus Gaussian noise in every leaf (zero-initialised heads, CLS and
    biases included), so outputs depend on every parameter."""
    params = init_params(config, seed)
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed + 1 if noise_seed is None else noise_seed), len(leaves))
    return jax.tree_util.tree_unflatten(
        tree, [x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys, strict=True)]
    )


def write_fashion_idx(directory: Path, train: int, test: int, seed: int = 0) -> Path:
    """Random 28x28 Fashion-MNIST-style IDX files (``train`` and ``test`` images) in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for prefix, n in (("train", train), ("t10k", test)):
        write_idx(directory / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(directory / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, n))
    return directory
