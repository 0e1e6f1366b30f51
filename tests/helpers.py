"""Shared test helpers: the tiny ViT, random non-degenerate parameters, tokens and IDX files."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np

from tofu_jax.data.idx import write_idx
from tofu_jax.models.vit import ViTConfig, init_params

# The tiny ViT of the CLI, pipeline and fuzz tests (28x28 Fashion-MNIST-style images): files that need
# another option derive it with ``TINY.replace(...)``; other shapes are separate configs on purpose.
TINY = ViTConfig(
    image_size=28, patch_size=7, channels=1, num_classes=10, width=16, depth=3, mlp_dim=32, num_heads=2
)
# The 4-block ViT of the shared linearity profile (tests/conftest.py ``profile``): 16x16 images, patch 2.
PROFILED = ViTConfig(
    image_size=16, patch_size=2, channels=1, num_classes=4, width=16, depth=4, mlp_dim=32, num_heads=2
)


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


def random_tokens(seed: int, b: int, n: int, c: int, dtype=np.float32) -> np.ndarray:
    """``[b, n, c]`` standard-normal tokens."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(b, n, c)).astype(dtype)


def random_sizes(seed: int, b: int, n: int) -> np.ndarray:
    """``[b, n, 1]`` token sizes in 1..4 (the ``seed + 1`` stream)."""
    return np.random.default_rng(seed + 1).integers(1, 5, size=(b, n, 1)).astype(np.float32)
