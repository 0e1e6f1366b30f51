"""The one attention of tofu_jax: multi-head softmax attention with the proportional-attention bias.

Proportional attention adds ``log(size_j)`` to the logit of every key ``j``. As an additive bias it
runs through :func:`jax.nn.dot_product_attention`, so XLA can use a fused kernel (cuDNN flash
attention on GPUs for bf16/fp16) instead of materialising the ``[B, H, N, N]`` probabilities.

:func:`attend` is the math; :class:`ToFuAttention` (Linen) and :class:`ToFuAttentionNNX` (``flax.nnx``)
are the modules with Google's kernel layout and names that the ViT (blocks and MAP head), the DiT and
user models all use. They return the matching metric (keys averaged over heads) and, when asked, the
keys and the CLS token's attention.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

from tofu_jax.errors import ConfigError, UserError
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


def _outputs(out, q, k, size, return_keys: bool, return_cls_attention: bool) -> tuple:
    result = (out, k.mean(axis=2))
    if return_keys:
        result += (k,)
    if return_cls_attention:
        result += (cls_attention(q, k, size),)
    return result


def _check_width(width: int, num_heads: int) -> None:
    if width % num_heads:
        raise UserError(f"width {width} is not divisible by num_heads {num_heads}")


class ToFuAttention(nn.Module):
    """Linen multi-head attention with proportional attention, Google's layout and names.

    Kernels: ``query``/``key``/``value`` ``(D, H, hd)``, ``out`` ``(H, hd, D)``.

    Call as ``attn(x, size=None, *, kv=None, return_keys=False, return_cls_attention=False)``:
    queries from ``x [B, Nq, D]``, keys and values from ``kv [B, N, D]`` (default ``x``: self-attention),
    ``size [B, N, 1]`` of the key tokens or None. Returns ``(out [B, Nq, D], metric [B, N, hd])``, the
    metric being the keys averaged over heads (ToMe's), then ``keys [B, N, H, hd]`` when
    ``return_keys`` and the CLS query's attention ``[B, N]`` (:func:`cls_attention`) when
    ``return_cls_attention``.
    """

    num_heads: int
    dtype: Any = jnp.float32
    use_bias: bool = True
    fused: bool = True
    kernel_init: Callable = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        size: jax.Array | None = None,
        *,
        kv: jax.Array | None = None,
        return_keys: bool = False,
        return_cls_attention: bool = False,
    ) -> tuple:
        width = x.shape[-1]
        _check_width(width, self.num_heads)
        kv = x if kv is None else kv
        dense = dict(use_bias=self.use_bias, dtype=self.dtype, kernel_init=self.kernel_init)
        heads = (self.num_heads, width // self.num_heads)
        q = nn.DenseGeneral(heads, **dense, name="query")(x)
        k = nn.DenseGeneral(heads, **dense, name="key")(kv)
        v = nn.DenseGeneral(heads, **dense, name="value")(kv)
        y = attend(q, k, v, size, fused=self.fused)
        out = nn.DenseGeneral(width, axis=(-2, -1), **dense, name="out")(y)
        return _outputs(out, q, k, size, return_keys, return_cls_attention)


class ToFuAttentionNNX(nnx.Module):
    """The ``flax.nnx`` twin of :class:`ToFuAttention`: same call, parameter names and layouts.

    ``ToFuAttentionNNX(width, num_heads, rngs=nnx.Rngs(0))(x, size) -> (out, metric)``.
    """

    def __init__(
        self,
        width: int,
        num_heads: int,
        *,
        rngs: nnx.Rngs,
        dtype: Any = None,
        use_bias: bool = True,
        fused: bool = True,
    ):
        _check_width(width, num_heads)
        heads = (num_heads, width // num_heads)
        proj = dict(use_bias=use_bias, dtype=dtype, rngs=rngs)
        self.query = nnx.LinearGeneral(width, heads, **proj)
        self.key = nnx.LinearGeneral(width, heads, **proj)
        self.value = nnx.LinearGeneral(width, heads, **proj)
        self.out = nnx.LinearGeneral(heads, width, axis=(-2, -1), **proj)
        self.fused = fused

    def __call__(
        self,
        x: jax.Array,
        size: jax.Array | None = None,
        *,
        kv: jax.Array | None = None,
        return_keys: bool = False,
        return_cls_attention: bool = False,
    ) -> tuple:
        kv = x if kv is None else kv
        q, k, v = self.query(x), self.key(kv), self.value(kv)
        out = self.out(attend(q, k, v, size, fused=self.fused))
        return _outputs(out, q, k, size, return_keys, return_cls_attention)

    def load_linen(self, params: dict) -> ToFuAttentionNNX:
        """Copy parameters from a Linen :class:`ToFuAttention` (``{"query": {"kernel", "bias"}, ...}``)."""
        for name in ("query", "key", "value", "out"):
            layer = getattr(self, name)
            layer.kernel[...] = jnp.asarray(params[name]["kernel"])
            if layer.bias is not None and "bias" in params[name]:
                layer.bias[...] = jnp.asarray(params[name]["bias"])
        return self
