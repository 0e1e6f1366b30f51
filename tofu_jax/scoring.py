"""Token-importance scores: which tokens matter to the classifier (higher = more important).

CLS attention, the score importance ops use by default, is :func:`tofu_jax.attention.cls_attention`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from tofu_jax.errors import UserError
from tofu_jax.matching import _check_rank


def key_norm(keys: jax.Array) -> jax.Array:
    """L2 norm of each token's key (a cheap, attention-free importance proxy).

    Args:
      keys: ``[B, N, C]`` (keys averaged over heads) or ``[B, N, H, hd]``.
    Returns:
      ``[B, N]`` float32.
    """
    if keys.ndim == 4:
        keys = keys.reshape(keys.shape[:2] + (-1,))
    _check_rank("keys", keys, 3, "[B, N, C]")
    return jnp.linalg.norm(keys.astype(jnp.float32), axis=-1)


def gradient_saliency(tokens: jax.Array, grads: jax.Array) -> jax.Array:
    """First-order (Taylor) importance ``|<x, dL/dx>|`` per token.

    Args:
      tokens: ``[B, N, C]`` activations.  grads: ``[B, N, C]`` gradient of a loss w.r.t. them.
    Returns:
      ``[B, N]`` float32.
    """
    _check_rank("tokens", tokens, 3, "[B, N, C]")
    if grads.shape != tokens.shape:
        raise UserError(f"grads shape {grads.shape} differs from tokens shape {tokens.shape}")
    return jnp.abs(jnp.sum(tokens.astype(jnp.float32) * grads.astype(jnp.float32), axis=-1))
