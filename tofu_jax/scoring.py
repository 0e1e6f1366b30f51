"""Token-importance scores: which tokens matter to the classifier (higher = more important)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from tofu_jax.errors import UserError
from tofu_jax.matching import _check_rank


def cls_attention(attn: jax.Array) -> jax.Array:
    """Attention paid by the CLS query to every key, averaged over heads (EViT).

    Args:
      attn: ``[B, H, N, N]`` softmax attention probabilities (query, key), CLS at index 0.
    Returns:
      ``[B, N]`` float32.
    """
    _check_rank("attn", attn, 4, "[B, H, N, N]")
    return attn[:, :, 0, :].astype(jnp.float32).mean(axis=1)


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
