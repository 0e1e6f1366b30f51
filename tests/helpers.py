"""Shared test fixtures: random, non-degenerate parameters for tiny models."""

from __future__ import annotations

import jax

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
