"""The reduction registry: every op a schedule can name, and what it means (docs/algorithms.md §2-§4).

``REDUCTIONS[op]`` says how many tokens ``op`` may remove from ``N`` tokens with ``P`` protected prefix
tokens, how to apply it with a static ``r`` (the compiled programs), how to apply it with a runtime
``r`` at a fixed shape (the planner's emulator) and what choosing the tokens costs (FLOPs). The ViT,
the DiT, :class:`~tofu_jax.blocks.TokenReducer`, schedule validation, FLOPs and the planner all read
this table; adding an op is one entry here plus its tests.

Every ``apply`` has the signature ``apply(x, size, r, inputs) -> (x, size, sources, matching)``:
``x [B, N, D]``, ``size [B, N, 1]``, a static int ``r``, and :class:`Inputs`; it returns ``N - r``
tokens, the source map carried along (or None) and the bipartite :class:`~tofu_jax.matching.Matching`
when there is one (what :class:`~tofu_jax.blocks.TokenReducer` needs to unmerge).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from tofu_jax import masked, merging
from tofu_jax.matching import Matching, bipartite_soft_matching, max_reduction
from tofu_jax.merging import max_importance_reduction


class Inputs(NamedTuple):
    """What a block hands its reduction besides the tokens.

    Attributes:
      metric: ``[B, N, C]`` matching features (keys averaged over heads, or the tokens).
      scores: ``[B, N]`` importance (CLS attention or key norm), or None for ops that do not use it.
      protected: leading tokens that are never removed and never absorb another token.
      mlerp_norm: ``"max"`` or ``"weighted_mean"``, the norm rule of MLERP merges.
      sources: ``[B, N, N0]`` source map to carry along, or None.
    """

    metric: jax.Array
    scores: jax.Array | None = None
    protected: int = 1
    mlerp_norm: str = "max"
    sources: jax.Array | None = None


@dataclasses.dataclass(frozen=True)
class Reduction:
    """One op of the registry.

    Attributes:
      limit: ``(num_tokens, protected) -> int``, the most tokens it may remove.
      apply: static ``r``; see the module docstring.
      masked: ``(x, size, n, r, metric, scores, *, protected, norm) -> (x, size)`` at a fixed shape
        with ``n`` live tokens first and traced ``n``/``r`` (:mod:`tofu_jax.masked`).
      selection_macs: ``(n_in, n_out, c) -> multiply-adds`` of choosing the tokens (similarities of
        ``c``-dim features); NumPy arrays allowed.
      uses_scores: needs importance scores (CLS attention, else key norm).
      restorable: a result can be unmerged back to ``N`` tokens (a bipartite matching, or nothing
        removed); what :class:`~tofu_jax.blocks.TokenReducer` and the DiT accept.
    """

    limit: Callable[[int, int], int]
    apply: Callable[..., tuple[jax.Array, jax.Array, Any, Matching | None]]
    masked: Callable[..., tuple[jax.Array, jax.Array]]
    selection_macs: Callable[[Any, Any, int], Any]
    uses_scores: bool = False
    restorable: bool = False


def _unchanged(x, size, r, inputs):
    return x, size, inputs.sources, None


def _bipartite(rule: str | None):
    def apply(x, size, r, inputs):
        m = bipartite_soft_matching(inputs.metric, r, protected=inputs.protected)
        if rule is None:
            x, size = merging.prune(x, size, m)
        elif rule == "avg":
            x, size = merging.merge_avg(x, size, m)
        else:
            x, size = merging.merge_mlerp(x, size, m, norm=inputs.mlerp_norm)
        sources = inputs.sources
        if sources is not None:
            sources = merging.merge_sources(sources, m, merged=rule is not None)
        return x, size, sources, m

    return apply


def _importance(rule: str | None):
    def apply(x, size, r, inputs):
        sources = inputs.sources
        if rule is None:
            keep = merging.importance_keep_indices(inputs.scores, r, protected=inputs.protected)
            take = functools.partial(jnp.take_along_axis, indices=keep[..., None], axis=1)
            return take(x), take(size), (None if sources is None else take(sources)), None
        plan = merging.importance_matching(inputs.metric, inputs.scores, r, protected=inputs.protected)
        x, size = merging.merge_importance(x, size, plan, rule=rule, norm=inputs.mlerp_norm)
        if sources is not None:
            sources = merging.importance_sources(sources, plan, merged=True)
        return x, size, sources, None

    return apply


def _bipartite_macs(n_in, n_out, c):
    return np.where(np.asarray(n_out) < n_in, ((np.asarray(n_in) + 1) // 2) * (np.asarray(n_in) // 2) * c, 0)


def _importance_merge_macs(n_in, n_out, c):  # sources x kept tokens
    return np.where(np.asarray(n_out) < n_in, (np.asarray(n_in) - n_out) * np.asarray(n_out) * c, 0)


def _no_macs(n_in, n_out, c):
    return np.zeros_like(np.asarray(n_in))


def _masked_bipartite(rule):
    def run(x, size, n, r, metric, scores, *, protected, norm):
        return masked.bipartite(x, size, n, r, metric, protected=protected, rule=rule, norm=norm)

    return run


def _masked_importance(rule):
    def run(x, size, n, r, metric, scores, *, protected, norm):
        return masked.importance(x, size, n, r, metric, scores, protected=protected, rule=rule, norm=norm)

    return run


REDUCTIONS: dict[str, Reduction] = {
    "none": Reduction(
        lambda n, p: 0, _unchanged, lambda x, size, *a, **k: (x, size), _no_macs, restorable=True
    ),
    # Bipartite soft matching (ToMe / ToFu): r <= (N - P) // 2.
    "prune": Reduction(
        max_reduction, _bipartite(None), _masked_bipartite(None), _bipartite_macs, restorable=True
    ),
    "merge_avg": Reduction(
        max_reduction, _bipartite("avg"), _masked_bipartite("avg"), _bipartite_macs, restorable=True
    ),
    "merge_mlerp": Reduction(
        max_reduction, _bipartite("mlerp"), _masked_bipartite("mlerp"), _bipartite_macs, restorable=True
    ),
    # Importance-guided (CLS attention, else key norm): r <= N - P - 1.
    "prune_importance": Reduction(
        max_importance_reduction, _importance(None), _masked_importance(None), _no_macs, uses_scores=True
    ),
    "merge_importance_mlerp": Reduction(
        max_importance_reduction,
        _importance("mlerp"),
        _masked_importance("mlerp"),
        _importance_merge_macs,
        uses_scores=True,
    ),  # fmt: skip
    "merge_importance_avg": Reduction(
        max_importance_reduction,
        _importance("avg"),
        _masked_importance("avg"),
        _importance_merge_macs,
        uses_scores=True,
    ),  # fmt: skip
}
OPS: tuple[str, ...] = tuple(REDUCTIONS)
RESTORABLE_OPS: tuple[str, ...] = tuple(op for op, red in REDUCTIONS.items() if red.restorable)


def limit(op: str, num_tokens: int, protected: int) -> int:
    """Most tokens ``op`` can remove from ``num_tokens`` with ``protected`` prefix tokens."""
    return REDUCTIONS[op].limit(num_tokens, protected)


def apply(op: str, x: jax.Array, size: jax.Array, r: int, inputs: Inputs):
    """Remove ``r`` (static) tokens with ``op``: ``(x [B, N - r, D], size, sources, matching)``."""
    if op == "none" or r == 0:
        return _unchanged(x, size, r, inputs)
    return REDUCTIONS[op].apply(x, size, r, inputs)


def apply_masked(x, size, n, op_index, r, metric, scores, *, protected: int, mlerp_norm: str = "max"):
    """Op number ``op_index`` of :data:`OPS` with runtime ``r``, at a fixed shape.

    Args:
      x: ``[B, N, D]`` with the ``n`` live tokens first.  size: ``[B, N, 1]``, 0 for dead tokens.
      n, op_index, r: int32 scalars (may be traced).  metric: ``[B, N, C]``.  scores: ``[B, N]``.
    Returns:
      ``(x, size)`` of the same shapes, with ``n - r`` live tokens first.
    """
    branches = [
        functools.partial(red.masked, x, size, n, r, metric, scores, protected=protected, norm=mlerp_norm)
        for red in REDUCTIONS.values()
    ]
    return jax.lax.switch(jnp.where(r == 0, 0, op_index), branches)
