"""Bipartite soft matching (ToMe), the plan every token-reduction op shares.

The matching is computed once per block from a similarity metric (attention keys averaged over heads)
and returned as a small set of index arrays. prune, merge_avg, merge_mlerp, unmerge and source tracking
all consume the same :class:`Matching`, so the choice of *which* tokens go is separate from *what
happens* to them.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from tofu_jax.errors import UserError

_EPS = 1e-6


class Matching(NamedTuple):
    """Index plan of one bipartite soft matching over ``N`` tokens.

    Tokens are split alternately: set A holds tokens ``0, 2, 4, ...``, set B holds ``1, 3, 5, ...``.

    Attributes:
      unm_idx: ``[B, Na - r]`` int32, A-local indices of the kept A tokens, ascending (so a CLS token
        at index 0 stays first).
      src_idx: ``[B, r]`` int32, A-local indices of the A tokens removed (pruned or merged).
      dst_idx: ``[B, r]`` int32, B-local index of the best partner of each src token.
      protected: number of leading protected tokens (0: none, 1: CLS, 2: CLS and distillation).
    """

    unm_idx: jax.Array
    src_idx: jax.Array
    dst_idx: jax.Array
    protected: int = 1

    @property
    def r(self) -> int:
        return self.src_idx.shape[-1]


def max_reduction(num_tokens: int, protected: int = 1) -> int:
    """Largest ``r`` a bipartite matching can remove from ``num_tokens`` tokens."""
    return max(0, (num_tokens - protected) // 2)


def check_r(r: int, num_tokens: int, protected: int, *, name: str = "r") -> None:
    """Raise ``ValueError`` unless ``0 <= r <= (num_tokens - protected) // 2``."""
    if not isinstance(r, int) or isinstance(r, bool):
        raise UserError(f"{name} must be a static Python int, got {type(r).__name__}")
    if protected not in (0, 1, 2):
        raise UserError(f"protected must be 0, 1 or 2, got {protected}")
    limit = max_reduction(num_tokens, protected)
    if not 0 <= r <= limit:
        raise UserError(
            f"{name}={r} out of range: with {num_tokens} tokens and {protected} protected, "
            f"bipartite matching can remove 0..{limit} tokens"
        )


def _check_rank(name: str, x: jax.Array, rank: int, shape_doc: str) -> None:
    if x.ndim != rank:
        raise UserError(f"{name} must have shape {shape_doc}, got shape {tuple(x.shape)}")


def bipartite_soft_matching(metric: jax.Array, r: int, *, protected: int = 1) -> Matching:
    """ToMe's bipartite soft matching (docs/algorithms.md §2).

    Args:
      metric: ``[B, N, C]`` similarity features (keys averaged over heads). Compared by cosine.
      r: static number of tokens to remove, ``0 <= r <= (N - protected) // 2``.
      protected: leading tokens that never move. 1 protects a CLS token at index 0 (in A: it is never
        a source). 2 also protects a distillation token at index 1 (in B: it is never a destination).

    Returns:
      A :class:`Matching`; ops applied with it return ``N - r`` tokens in the order ``[unm, B]``
      (with ``protected=2`` the distillation token is moved right after CLS so prefixes stay first).
    """
    _check_rank("metric", metric, 3, "[B, N, C]")
    n = metric.shape[1]
    check_r(r, n, protected)
    metric = metric.astype(jnp.float32)
    scale = jnp.max(jnp.abs(metric), axis=-1, keepdims=True)
    metric = metric / jnp.where(scale > 1e15, scale, 1.0)  # huge tokens: keep the norm finite
    metric = metric / jnp.maximum(jnp.linalg.norm(metric, axis=-1, keepdims=True), _EPS)
    a, b = metric[:, ::2], metric[:, 1::2]
    scores = jnp.einsum("bic,bjc->bij", a, b)
    if protected >= 1:
        scores = scores.at[:, 0, :].set(-jnp.inf)
    if protected >= 2:
        scores = scores.at[:, :, 0].set(-jnp.inf)
    node_max = scores.max(axis=-1)
    node_idx = scores.argmax(axis=-1).astype(jnp.int32)
    # Stable sort so ties resolve by index, identically to the NumPy reference.
    edge_idx = jnp.argsort(-node_max, axis=-1, stable=True).astype(jnp.int32)
    src_idx = edge_idx[:, :r]
    unm_idx = jnp.sort(edge_idx[:, r:], axis=-1)
    dst_idx = jnp.take_along_axis(node_idx, src_idx, axis=-1)
    return Matching(unm_idx=unm_idx, src_idx=src_idx, dst_idx=dst_idx, protected=protected)


def split_ab(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``[B, N, ...]`` -> (A ``[B, ceil(N/2), ...]``, B ``[B, floor(N/2), ...]``)."""
    return x[:, ::2], x[:, 1::2]


def gather_tokens(x: jax.Array, idx: jax.Array) -> jax.Array:
    """``x [B, N, C]``, ``idx [B, K]`` -> ``[B, K, C]``."""
    return jnp.take_along_axis(x, idx[..., None], axis=1)


def join(unm: jax.Array, b: jax.Array, protected: int) -> jax.Array:
    """Concatenate kept A tokens and B tokens in output order (prefix tokens first)."""
    if protected >= 2:
        return jnp.concatenate([unm[:, :1], b[:, :1], unm[:, 1:], b[:, 1:]], axis=1)
    return jnp.concatenate([unm, b], axis=1)


def output_positions(m: Matching, num_tokens: int) -> jax.Array:
    """Original index of every output token (``[B, N - r]`` int32); src tokens appear nowhere."""
    batch = m.unm_idx.shape[0]
    nb = num_tokens // 2
    b_pos = jnp.broadcast_to(jnp.arange(nb, dtype=jnp.int32) * 2 + 1, (batch, nb))
    return join((m.unm_idx * 2)[..., None], b_pos[..., None], m.protected)[..., 0]
