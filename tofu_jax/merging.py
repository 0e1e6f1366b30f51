"""Token-reduction ops on a :class:`~tofu_jax.matching.Matching` and proportional attention.

See docs/algorithms.md §3 (the ops) and §4 (proportional attention).

Every op is a pure function of arrays plus static ints: shapes are fixed by ``r``, so each static
configuration compiles once. Sizes ``s: [B, N, 1]`` count how many original patches a token stands for.
Arithmetic runs in float32 whatever the input dtype (bf16 inputs come back as bf16).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp

from tofu_jax.errors import UserError
from tofu_jax.matching import (
    Matching,
    _check_rank,
    check_protected,
    gather_tokens,
    join,
    split_ab,
    split_joined,
)

MlerpNorm = Literal["max", "weighted_mean"]
_EPS = 1e-6
_HUGE = 1e15  # entries above this may overflow a float32 sum of squares


def _scatter(b: jax.Array, idx: jax.Array, vals: jax.Array, how: str) -> jax.Array:
    """Per-batch ``b[idx] (how)= vals`` for ``b [B, Nb, C]``, ``idx [B, r]``, ``vals [B, r, C]``."""

    def one(bb, ii, vv):
        ref = bb.at[ii]
        return ref.add(vv) if how == "add" else ref.max(vv)

    return jax.vmap(one)(b, idx, vals)


def _check_inputs(x: jax.Array, size: jax.Array | None, m: Matching) -> jax.Array:
    _check_rank("x", x, 3, "[B, N, C]")
    if size is None:
        size = jnp.ones(x.shape[:2] + (1,), jnp.float32)
    if size.shape != x.shape[:2] + (1,):
        raise UserError(f"size must have shape {x.shape[:2] + (1,)} ([B, N, 1]), got {size.shape}")
    if m.unm_idx.shape[0] != x.shape[0]:
        raise UserError(f"matching batch {m.unm_idx.shape[0]} does not match x batch {x.shape[0]}")
    na = (x.shape[1] + 1) // 2
    if m.unm_idx.shape[1] + m.src_idx.shape[1] != na:
        raise UserError(
            f"matching covers {m.unm_idx.shape[1] + m.src_idx.shape[1]} A tokens, but x with "
            f"N={x.shape[1]} has {na}"
        )
    return size


def prune(x: jax.Array, size: jax.Array | None, m: Matching) -> tuple[jax.Array, jax.Array]:
    """ToFu prune: drop the src tokens; kept tokens and all sizes unchanged.

    Args:
      x: ``[B, N, C]`` tokens.  size: ``[B, N, 1]`` or None (all ones).  m: matching over N tokens.
    Returns:
      ``([B, N - r, C], [B, N - r, 1])``.
    """
    size = _check_inputs(x, size, m)
    (xa, xb), (sa, sb) = split_ab(x), split_ab(size)
    x_out = join(gather_tokens(xa, m.unm_idx), xb, m.protected)
    s_out = join(gather_tokens(sa, m.unm_idx), sb, m.protected)
    return x_out, s_out


def _merge_parts(x, size, m):
    """Size-weighted sums into B: returns (xa_unm, sa_unm, xb, sb, count, weighted_sum, new_size)."""
    xf = x.astype(jnp.float32)
    size = size.astype(jnp.float32)
    (xa, xb), (sa, sb) = split_ab(xf), split_ab(size)
    src_x = gather_tokens(xa, m.src_idx)
    src_s = gather_tokens(sa, m.src_idx)
    weighted = _scatter(xb * sb, m.dst_idx, src_x * src_s, "add")
    new_size = _scatter(sb, m.dst_idx, src_s, "add")
    count = _scatter(jnp.zeros_like(sb), m.dst_idx, jnp.ones_like(src_s), "add")
    return xa, sa, xb, sb, src_x, src_s, count, weighted, new_size


def merge_avg(x: jax.Array, size: jax.Array | None, m: Matching) -> tuple[jax.Array, jax.Array]:
    """ToMe merge: ``x_dst <- sum(s_i x_i) / sum(s_i)``, ``s_dst <- sum(s_i)``.

    Args:
      x: ``[B, N, C]``.  size: ``[B, N, 1]`` or None.  m: matching over N tokens.
    Returns:
      ``([B, N - r, C], [B, N - r, 1])``; size-weighted token sum and total size are preserved.
    """
    size = _check_inputs(x, size, m)
    xa, sa, xb, _, _, _, count, weighted, new_size = _merge_parts(x, size, m)
    merged_b = jnp.where(count > 0, weighted / new_size, xb)
    x_out = join(gather_tokens(xa, m.unm_idx), merged_b, m.protected)
    s_out = join(gather_tokens(sa, m.unm_idx), new_size, m.protected)
    return x_out.astype(x.dtype), s_out


def safe_norm(x: jax.Array) -> jax.Array:
    """``||x||`` over the last axis, ``[..., C] -> [..., 1]``, finite wherever the result fits the dtype.

    Dividing by the largest entry first keeps the squares from overflowing (tokens of norm 1e30 in
    float32 would give ``inf`` and then NaN directions).
    """
    scale = jnp.max(jnp.abs(x), axis=-1, keepdims=True)
    scale = jnp.where(scale > _HUGE, scale, 1.0)  # ordinary tokens: the plain norm, bit for bit
    return scale * jnp.linalg.norm(x / scale, axis=-1, keepdims=True)


def merge_mlerp(
    x: jax.Array, size: jax.Array | None, m: Matching, *, norm: MlerpNorm = "max"
) -> tuple[jax.Array, jax.Array]:
    """ToFu MLERP merge: direction of the size-weighted average, norm of the merged tokens.

    ``norm="max"``: result norm is ``max_i ||x_i||`` over the dst and its srcs (default,
    docs/algorithms.md §3).
    ``norm="weighted_mean"``: ``sum(s_i ||x_i||) / sum(s_i)``. A zero average gives a zero token.

    Args:
      x: ``[B, N, C]``.  size: ``[B, N, 1]`` or None.  m: matching over N tokens.
    Returns:
      ``([B, N - r, C], [B, N - r, 1])``.
    """
    if norm not in ("max", "weighted_mean"):
        raise UserError(f"norm must be 'max' or 'weighted_mean', got {norm!r}")
    size = _check_inputs(x, size, m)
    xa, sa, xb, sb, src_x, src_s, count, weighted, new_size = _merge_parts(x, size, m)
    avg = weighted / new_size
    nb, ns = safe_norm(xb), safe_norm(src_x)
    if norm == "max":
        target = _scatter(nb, m.dst_idx, ns, "max")
    else:
        target = _scatter(nb * sb, m.dst_idx, ns * src_s, "add") / new_size
    avg_norm = safe_norm(avg)
    mlerp = avg * (target / jnp.maximum(avg_norm, _EPS))
    merged_b = jnp.where(count > 0, mlerp, xb)
    x_out = join(gather_tokens(xa, m.unm_idx), merged_b, m.protected)
    s_out = join(gather_tokens(sa, m.unm_idx), new_size, m.protected)
    return x_out.astype(x.dtype), s_out


def importance_keep_indices(scores: jax.Array, r: int, *, protected: int = 1) -> jax.Array:
    """Indices (ascending) of the ``N - r`` most important tokens; protected tokens always kept.

    Args:
      scores: ``[B, N]`` importance (higher = keep).  r: static count to drop.
    Returns:
      ``[B, N - r]`` int32.
    """
    _check_rank("scores", scores, 2, "[B, N]")
    n = scores.shape[1]
    check_protected(protected)
    if not isinstance(r, int) or isinstance(r, bool) or not 0 <= r <= n - protected - 1:
        raise UserError(
            f"r={r} out of range: importance pruning of {n} tokens with {protected} protected "
            f"can drop 0..{n - protected - 1}"
        )
    scores = scores.astype(jnp.float32)
    if protected:
        scores = scores.at[:, :protected].set(jnp.inf)
    _, keep = jax.lax.top_k(scores, n - r)
    return jnp.sort(keep, axis=-1).astype(jnp.int32)


def prune_importance(
    x: jax.Array, size: jax.Array | None, scores: jax.Array, r: int, *, protected: int = 1
) -> tuple[jax.Array, jax.Array]:
    """EViT-style prune: drop the ``r`` non-protected tokens with the lowest score.

    Args:
      x: ``[B, N, C]``.  size: ``[B, N, 1]`` or None.  scores: ``[B, N]`` (e.g. CLS attention).
    Returns:
      ``([B, N - r, C], [B, N - r, 1])`` in original token order.
    """
    _check_rank("x", x, 3, "[B, N, C]")
    if scores.shape != x.shape[:2]:
        raise UserError(f"scores must have shape {x.shape[:2]} ([B, N]), got {scores.shape}")
    if size is None:
        size = jnp.ones(x.shape[:2] + (1,), jnp.float32)
    keep = importance_keep_indices(scores, r, protected=protected)
    return gather_tokens(x, keep), gather_tokens(size, keep)


def unmerge(y: jax.Array, m: Matching, num_tokens: int) -> jax.Array:
    """Undo one reduction for dense outputs: every removed token copies its dst's value.

    Args:
      y: ``[B, N - r, C]`` output of prune/merge with ``m``.  num_tokens: N before the reduction.
    Returns:
      ``[B, N, C]`` in the original token order.
    """
    _check_rank("y", y, 3, "[B, N - r, C]")
    n_unm = m.unm_idx.shape[1]
    na, nb = (num_tokens + 1) // 2, num_tokens // 2
    if y.shape[1] != n_unm + nb:
        raise UserError(f"y has {y.shape[1]} tokens, the matching produces {n_unm + nb}")
    unm, b = split_joined(y, n_unm, m.protected)

    def place(u, bb, ui, si, di):
        a = jnp.zeros((na,) + y.shape[2:], y.dtype)
        a = a.at[ui].set(u)
        return a.at[si].set(bb[di])

    a = jax.vmap(place)(unm, b, m.unm_idx, m.src_idx, m.dst_idx)
    out = jnp.zeros((y.shape[0], num_tokens) + y.shape[2:], y.dtype)
    return out.at[:, ::2].set(a).at[:, 1::2].set(b)


def merge_sources(sources: jax.Array, m: Matching, *, merged: bool) -> jax.Array:
    """Track which original patches each token covers.

    Args:
      sources: ``[B, N, N0]`` 0/1 map.  m: matching over N tokens.
      merged: True for merges (dst absorbs its srcs' patches), False for prune (they vanish).
    Returns:
      ``[B, N - r, N0]``.
    """
    sa, sb = split_ab(sources)
    if merged:
        sb = _scatter(sb, m.dst_idx, gather_tokens(sa, m.src_idx), "max")
    return join(gather_tokens(sa, m.unm_idx), sb, m.protected)


def size_bias(size: jax.Array) -> jax.Array:
    """Proportional-attention bias ``log(s_j)`` added to logits of key ``j`` (docs/algorithms.md §4).

    Args:
      size: ``[B, N, 1]``.
    Returns:
      ``[B, 1, 1, N]`` float32, broadcastable to attention logits ``[B, H, Nq, Nk]``.
    """
    _check_rank("size", size, 3, "[B, N, 1]")
    return jnp.log(size.astype(jnp.float32))[:, None, None, :, 0]


# --- importance-guided selection ------------------------------------------------------------------
class ImportancePlan(NamedTuple):
    """Which tokens go by importance, and which kept token each one joins by similarity.

    The ``r`` least important non-protected tokens are sources; each is matched to its most similar
    (cosine on the metric) *kept* non-protected token. Unlike bipartite matching, every kept token can
    be a destination and ``r`` can go up to ``N - protected - 1``.

    Attributes:
      keep_idx: ``[B, N - r]`` int32, original indices of the kept tokens, ascending (protected first).
      src_idx: ``[B, r]`` int32, original indices of the removed tokens, ascending.
      dst_idx: ``[B, r]`` int32, position in ``keep_idx`` (the output) of each source's destination.
      scores: ``[B, N]`` float32 importance the plan was made from (used by ``weights="importance"``).
      protected: number of leading protected tokens (never removed, never a destination).
    """

    keep_idx: jax.Array
    src_idx: jax.Array
    dst_idx: jax.Array
    scores: jax.Array
    protected: int = 1

    @property
    def r(self) -> int:
        return self.src_idx.shape[-1]


def max_importance_reduction(num_tokens: int, protected: int = 1) -> int:
    """Largest ``r`` importance-guided ops can remove (one non-protected token must stay)."""
    return max(0, num_tokens - protected - 1)


def importance_matching(metric: jax.Array, scores: jax.Array, r: int, protected: int = 1) -> ImportancePlan:
    """Plan an importance-guided reduction: least important ``r`` tokens -> most similar kept token.

    Ties in ``scores`` resolve by index (the lower index counts as more important, as in
    ``lax.top_k``), ties in similarity by the lower kept position, identically to the NumPy reference.

    Args:
      metric: ``[B, N, C]`` similarity features (keys averaged over heads), compared by cosine.
      scores: ``[B, N]`` importance, higher = keep (CLS attention, key norm, gradient saliency).
      r: static number of tokens to remove, ``0 <= r <= N - protected - 1``.
      protected: leading tokens that are never removed and never absorb another token.
    Returns:
      An :class:`ImportancePlan`; ops applied with it return ``N - r`` tokens in original order.
    """
    _check_rank("metric", metric, 3, "[B, N, C]")
    _check_rank("scores", scores, 2, "[B, N]")
    b, n = metric.shape[:2]
    if scores.shape != (b, n):
        raise UserError(f"scores must have shape {(b, n)} ([B, N]), got {tuple(scores.shape)}")
    check_protected(protected)
    limit = max_importance_reduction(n, protected)
    if not isinstance(r, int) or isinstance(r, bool) or not 0 <= r <= limit:
        raise UserError(
            f"r={r} out of range: importance-guided reduction of {n} tokens with {protected} protected "
            f"can remove 0..{limit}"
        )
    scores = scores.astype(jnp.float32)
    ranked = scores.at[:, :protected].set(jnp.inf) if protected else scores
    order = jnp.argsort(-ranked, axis=-1, stable=True).astype(jnp.int32)
    keep_idx = jnp.sort(order[:, : n - r], axis=-1)
    src_idx = jnp.sort(order[:, n - r :], axis=-1)
    unit = metric.astype(jnp.float32)
    unit = unit / jnp.maximum(safe_norm(unit), _EPS)
    sim = jnp.einsum("bic,bjc->bij", gather_tokens(unit, src_idx), gather_tokens(unit, keep_idx))
    if protected:  # kept positions 0..protected-1 are the protected tokens (keep_idx is ascending)
        sim = sim.at[:, :, :protected].set(-jnp.inf)
    dst_idx = sim.argmax(axis=-1).astype(jnp.int32)
    return ImportancePlan(keep_idx, src_idx, dst_idx, scores, protected)


def _check_plan(x: jax.Array, size: jax.Array | None, plan: ImportancePlan) -> jax.Array:
    _check_rank("x", x, 3, "[B, N, C]")
    if size is None:
        size = jnp.ones(x.shape[:2] + (1,), jnp.float32)
    if size.shape != x.shape[:2] + (1,):
        raise UserError(f"size must have shape {x.shape[:2] + (1,)} ([B, N, 1]), got {size.shape}")
    covered = plan.keep_idx.shape[1] + plan.src_idx.shape[1]
    if plan.keep_idx.shape[0] != x.shape[0] or covered != x.shape[1]:
        raise UserError(
            f"plan covers batch {plan.keep_idx.shape[0]} x {covered} tokens, x has {tuple(x.shape[:2])}"
        )
    return size


def prune_unimportant(
    x: jax.Array, size: jax.Array | None, plan: ImportancePlan
) -> tuple[jax.Array, jax.Array]:
    """Drop the plan's sources (the ``r`` least important tokens); kept tokens and sizes unchanged.

    Returns ``([B, N - r, C], [B, N - r, 1])`` in original order.
    """
    size = _check_plan(x, size, plan)
    return gather_tokens(x, plan.keep_idx), gather_tokens(size, plan.keep_idx)


def merge_importance(
    x: jax.Array,
    size: jax.Array | None,
    plan: ImportancePlan,
    *,
    rule: Literal["mlerp", "avg"] = "mlerp",
    weights: Literal["size", "importance"] = "size",
    norm: MlerpNorm = "max",
) -> tuple[jax.Array, jax.Array]:
    """Merge each source into its planned kept token.

    Weights ``w_i`` are the sizes (``weights="size"``) or sizes times importance
    (``weights="importance"``, EViT-style fusion; scores are clipped at a small positive floor).
    ``rule="avg"``: ``x_dst <- sum(w_i x_i) / sum(w_i)``. ``rule="mlerp"``: the same direction, with
    norm ``max_i ||x_i||`` (``norm="max"``) or ``sum(w_i ||x_i||) / sum(w_i)`` (``"weighted_mean"``).
    Sizes always add up (``s_dst <- sum(s_i)``). Kept tokens that absorb nothing pass through unchanged.

    Args:
      x: ``[B, N, C]``.  size: ``[B, N, 1]`` or None.  plan: from :func:`importance_matching`.
    Returns:
      ``([B, N - r, C], [B, N - r, 1])`` in original order (protected tokens first).
    """
    if rule not in ("mlerp", "avg"):
        raise UserError(f"rule must be 'mlerp' or 'avg', got {rule!r}")
    if weights not in ("size", "importance"):
        raise UserError(f"weights must be 'size' or 'importance', got {weights!r}")
    if norm not in ("max", "weighted_mean"):
        raise UserError(f"norm must be 'max' or 'weighted_mean', got {norm!r}")
    size = _check_plan(x, size, plan)
    xf, sf = x.astype(jnp.float32), size.astype(jnp.float32)
    w = sf if weights == "size" else sf * jnp.maximum(plan.scores.astype(jnp.float32), _EPS)[..., None]
    keep_x, src_x = gather_tokens(xf, plan.keep_idx), gather_tokens(xf, plan.src_idx)
    keep_w, src_w = gather_tokens(w, plan.keep_idx), gather_tokens(w, plan.src_idx)
    keep_s, src_s = gather_tokens(sf, plan.keep_idx), gather_tokens(sf, plan.src_idx)
    new_size = _scatter(keep_s, plan.dst_idx, src_s, "add")
    w_sum = _scatter(keep_w, plan.dst_idx, src_w, "add")
    count = _scatter(jnp.zeros_like(keep_w), plan.dst_idx, jnp.ones_like(src_w), "add")
    merged = _scatter(keep_x * keep_w, plan.dst_idx, src_x * src_w, "add") / w_sum
    if rule == "mlerp":
        nk = safe_norm(keep_x)
        ns = safe_norm(src_x)
        if norm == "max":
            target = _scatter(nk, plan.dst_idx, ns, "max")
        else:
            target = _scatter(nk * keep_w, plan.dst_idx, ns * src_w, "add") / w_sum
        merged = merged * (target / jnp.maximum(safe_norm(merged), _EPS))
    x_out = jnp.where(count > 0, merged, keep_x)
    return x_out.astype(x.dtype), new_size


def importance_sources(sources: jax.Array, plan: ImportancePlan, *, merged: bool) -> jax.Array:
    """Source tracking for an :class:`ImportancePlan`: ``[B, N, N0]`` -> ``[B, N - r, N0]``."""
    kept = gather_tokens(sources, plan.keep_idx)
    if merged:
        kept = _scatter(kept, plan.dst_idx, gather_tokens(sources, plan.src_idx), "max")
    return kept
