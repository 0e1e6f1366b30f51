"""The one attention of tofu_jax: multi-head softmax attention with the proportional-attention bias.

Proportional attention adds ``log(size_j)`` to the logit of every key ``j``. As an additive bias it
runs through :func:`jax.nn.dot_product_attention`, so XLA can use a fused kernel (cuDNN flash
attention on GPUs for bf16/fp16) instead of materialising the ``[B, H, N, N]`` probabilities.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp

from tofu_jax.errors import ConfigError
from tofu_jax.merging import size_bias

# "auto" (cuDNN flash attention on GPUs for bf16/fp16 with head dims that it supports, XLA elsewhere),
# "xla" or "cudnn"; read when a program is traced.
IMPLEMENTATION_ENV = "TOFU_JAX_ATTENTION"


def fused_implementation(q: jax.Array) -> str | None:
    """Backend for :func:`jax.nn.dot_product_attention`: ``"cudnn"``, or None (XLA)."""
    choice = os.environ.get(IMPLEMENTATION_ENV, "auto")
    if choice not in ("auto", "xla", "cudnn"):
        raise ConfigError(f"${IMPLEMENTATION_ENV} must be auto, xla or cudnn, got {choice!r}")
    if choice == "auto":
        head_dim = q.shape[-1]
        cudnn_ok = q.dtype in (jnp.bfloat16, jnp.float16) and head_dim % 8 == 0 and head_dim <= 128
        choice = "cudnn" if cudnn_ok and jax.default_backend() == "gpu" else "xla"
    if choice == "cudnn" and (jax.default_backend() != "gpu" or q.dtype not in (jnp.bfloat16, jnp.float16)):
        raise ConfigError(f"${IMPLEMENTATION_ENV}=cudnn needs a GPU and bf16/fp16 compute (got "
                          f"{jax.default_backend()}, {q.dtype}); use auto or xla")  # fmt: skip
    return "cudnn" if choice == "cudnn" else None


def attend(
    q: jax.Array, k: jax.Array, v: jax.Array, size: jax.Array | None = None, *, fused: bool = True
) -> jax.Array:
    """``softmax(q k^T / sqrt(hd) + log s_j) v``.

    Args:
      q, k, v: ``[B, N, H, hd]``.  size: ``[B, N, 1]`` token sizes, or None for plain attention.
      fused: ``jax.nn.dot_product_attention``; False: explicit einsum + softmax in float32 (the
        reference the fused path is tested against).
    Returns:
      ``[B, N, H, hd]`` in ``v``'s dtype.
    """
    bias = size_bias(size) if size is not None else None  # [B, 1, 1, N] float32
    if fused:
        implementation = fused_implementation(q)
        if bias is not None:
            bias = bias.astype(q.dtype)
            if implementation == "cudnn":  # cuDNN takes a bias with the full [T, S] extent
                bias = jnp.broadcast_to(bias, (q.shape[0], 1, q.shape[1], k.shape[1]))
        return jax.nn.dot_product_attention(q, k, v, bias=bias, implementation=implementation)
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
    logits = logits / jnp.sqrt(jnp.float32(q.shape[-1]))
    if bias is not None:
        logits = logits + bias
    attn = jax.nn.softmax(logits, axis=-1)
    return jnp.einsum("bhqk,bkhd->bqhd", attn.astype(v.dtype), v)


def cls_attention(q: jax.Array, k: jax.Array, size: jax.Array | None = None) -> jax.Array:
    """Attention the CLS query (token 0) pays to every key, averaged over heads (EViT's importance).

    Only the CLS row is computed (``[B, H, N]``), so the full attention can stay fused.

    Args:
      q, k: ``[B, N, H, hd]``.  size: ``[B, N, 1]`` or None, as given to :func:`attend`.
    Returns:
      ``[B, N]`` float32.
    """
    logits = jnp.einsum("bhd,bkhd->bhk", q[:, 0], k, preferred_element_type=jnp.float32)
    logits = logits / jnp.sqrt(jnp.float32(q.shape[-1]))
    if size is not None:
        logits = logits + size_bias(size)[:, :, 0]
    return jax.nn.softmax(logits, axis=-1).mean(axis=1)
