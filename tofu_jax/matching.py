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
      unm_idx: ``[B, Na - r]`` int32, A-local indices of the kept A tokens, ascending (so the
        protected A tokens stay first).
      src_idx: ``[B, r]`` int32, A-local indices of the A tokens removed (pruned or merged).
      dst_idx: ``[B, r]`` int32, B-local index of the best partner of each src token.
      protected: number ``P`` of leading protected tokens (0: none, 1: CLS, 2: CLS and distillation,
        ``1 + R``: CLS and ``R`` register tokens, ...).
    """

    unm_idx: jax.Array
    src_idx: jax.Array
    dst_idx: jax.Array
    protected: int = 1

    @property
    def r(self) -> int:
        return self.src_idx.shape[-1]


def protected_split(protected: int) -> tuple[int, int]:
    """How many of the ``protected`` leading tokens fall in A (even indices) and in B (odd indices)."""
    return (protected + 1) // 2, protected // 2


def check_protected(protected) -> None:
    """Raise :class:`UserError` unless ``protected`` is a non-negative Python int."""
    if not isinstance(protected, int) or isinstance(protected, bool) or protected < 0:
        raise UserError(f"protected must be a non-negative int (leading tokens), got {protected!r}")


def max_reduction(num_tokens: int, protected: int = 1) -> int:
    """Largest ``r`` a bipartite matching can remove from ``num_tokens`` tokens."""
    return max(0, (num_tokens - protected) // 2)


def check_r(r: int, num_tokens: int, protected: int, *, name: str = "r") -> None:
    """Raise ``ValueError`` unless ``0 <= r <= (num_tokens - protected) // 2``."""
    if not isinstance(r, int) or isinstance(r, bool):
        raise UserError(f"{name} must be a static Python int, got {type(r).__name__}")
    check_protected(protected)
    limit = max_reduction(num_tokens, protected)
    if not 0 <= r <= limit:
        raise UserError(
            f"{name}={r} out of range: with {num_tokens} tokens and {protected} protected, "
            f"bipartite matching can remove 0..{limit} tokens"
        )


def _check_rank(name: str, x: jax.Array, rank: int, shape_doc: str) -> None:
    if x.ndim != rank:
        raise UserError(f"{name} must have shape {shape_doc}, got shape {tuple(x.shape)}")


def unit_features(metric: jax.Array) -> jax.Array:
    """``[..., C]`` float32 features of unit norm, the cosine similarity matching compares."""
    metric = metric.astype(jnp.float32)
    scale = jnp.max(jnp.abs(metric), axis=-1, keepdims=True)
    metric = metric / jnp.where(scale > 1e15, scale, 1.0)  # huge tokens: keep the norm finite
    return metric / jnp.maximum(jnp.linalg.norm(metric, axis=-1, keepdims=True), _EPS)


def bipartite_soft_matching(metric: jax.Array, r: int, *, protected: int = 1) -> Matching:
    """ToMe's bipartite soft matching (docs/algorithms.md §2).

    Args:
      metric: ``[B, N, C]`` similarity features (keys averaged over heads). Compared by cosine.
      r: static number of tokens to remove, ``0 <= r <= (N - protected) // 2``.
      protected: the ``P`` leading tokens that never move (CLS, distillation, register tokens). The
        protected A tokens (even indices) are never sources; the protected B tokens (odd indices) are
        never destinations.

    Returns:
      A :class:`Matching`; ops applied with it return ``N - r`` tokens in the order
      ``[the P protected tokens in their original order, kept A tokens ascending, B tokens ascending]``
      (:func:`join`); with ``P <= 1`` that is ToMe's ``[unm, B]``.
    """
    _check_rank("metric", metric, 3, "[B, N, C]")
    n = metric.shape[1]
    check_r(r, n, protected)
    metric = unit_features(metric)
    a, b = metric[:, ::2], metric[:, 1::2]
    scores = jnp.einsum("bic,bjc->bij", a, b)
    protected_a, protected_b = protected_split(protected)
    if protected_a:
        scores = scores.at[:, :protected_a, :].set(-jnp.inf)
    if protected_b:
        scores = scores.at[:, :, :protected_b].set(-jnp.inf)
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
    """Kept A tokens ``[B, Ka, ...]`` and B tokens ``[B, Nb, ...]`` in output order.

    The output order rule of every matching op: the ``protected`` leading tokens first, in their
    original order (token ``i`` is A-local ``i // 2`` for even ``i``, B-local ``i // 2`` for odd
    ``i``), then the other kept A tokens ascending, then the other B tokens ascending.
    """
    if protected <= 1:  # the only protected token (if any) is already unm[:, 0]
        return jnp.concatenate([unm, b], axis=1)
    protected_a, protected_b = protected_split(protected)
    prefix = [(unm if i % 2 == 0 else b)[:, i // 2 : i // 2 + 1] for i in range(protected)]
    return jnp.concatenate(prefix + [unm[:, protected_a:], b[:, protected_b:]], axis=1)


def split_joined(y: jax.Array, num_unm: int, protected: int) -> tuple[jax.Array, jax.Array]:
    """Inverse of :func:`join`: ``y [B, num_unm + Nb, ...]`` -> ``(unm [B, num_unm, ...], b)``."""
    if protected <= 1:
        return y[:, :num_unm], y[:, num_unm:]
    protected_a = protected_split(protected)[0]
    rest = protected + num_unm - protected_a
    unm = jnp.concatenate([y[:, 0:protected:2], y[:, protected:rest]], axis=1)
    b = jnp.concatenate([y[:, 1:protected:2], y[:, rest:]], axis=1)
    return unm, b


def output_positions(m: Matching, num_tokens: int) -> jax.Array:
    """Original index of every output token (``[B, N - r]`` int32); src tokens appear nowhere."""
    batch = m.unm_idx.shape[0]
    nb = num_tokens // 2
    b_pos = jnp.broadcast_to(jnp.arange(nb, dtype=jnp.int32) * 2 + 1, (batch, nb))
    return join((m.unm_idx * 2)[..., None], b_pos[..., None], m.protected)[..., 0]
