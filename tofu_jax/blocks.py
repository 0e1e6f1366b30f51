"""ToFu for any Flax transformer block: a token reducer with an undo.

Two pieces, independent of the ViT in :mod:`tofu_jax.models.vit`, that work with
:class:`tofu_jax.attention.ToFuAttention` (which returns the matching metric):

* :class:`TokenReducer`: a frozen (hashable, jit-static) description of one block's reduction, ``op``
  in ``none | prune | merge_avg | merge_mlerp`` removing ``r`` tokens by bipartite soft matching on a
  metric. ``reducer(x, size, metric)`` returns ``(x, size, state)`` with ``N - r`` tokens;
  ``state.restore(y)`` *unmerges* a ``[B, N - r, C]`` result back to all ``N`` positions.
* :func:`restore_all`: undo a chain of reductions (one state per block) in reverse order.

Two ways to use them inside a block (``x`` = block input, ``N`` tokens, ``attn`` a
:class:`~tofu_jax.attention.ToFuAttention`):

1. ToMe / ToFu for encoders (tokens stay reduced for later blocks)::

       y, metric = attn(norm1(x), size)
       x = x + y
       x, size, state = TokenReducer("merge_mlerp", r=8, protected=1)(x, size, metric)
       x = x + mlp(norm2(x))          # N - r tokens from here on; keep `state` if you need dense output

2. ToMe-for-Stable-Diffusion style (dense outputs, every block keeps ``N`` tokens)::

       y, metric = attn(norm1(x))
       x = x + y
       h, _, state = TokenReducer("merge_avg", r=64, protected=0)(norm2(x), None, metric)
       x = x + state.restore(mlp(h))  # the MLP ran on N - r tokens, the residual on all N

With ``restore`` (unmerge), every token removed by a merge receives the output of the merged token
it went into. For ``op="prune"`` the same copy happens: a pruned token takes the output of the kept
token it was matched to (its most similar one), so **with unmerge, "prune" degenerates to "copy from
the nearest kept token"** -- which is what ToFu's prune means in generation. The two differ only in
what the kept token's value is (its own for prune, the size-weighted average / MLERP of its group for
merges). Unmatched tokens come back unchanged (bit-exact) when the function in between is the
identity.

Everything here is shape-static: ``r`` is a Python int, so each reducer compiles to one XLA program.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import struct

from tofu_jax import merging, reduction
from tofu_jax.errors import ConfigError, UserError
from tofu_jax.matching import Matching


@struct.dataclass
class ReductionState:
    """What :class:`TokenReducer` removed, enough to unmerge a result back to all tokens.

    A pytree (it can cross ``jax.jit`` boundaries); the token count and prefix count are static.

    Attributes:
      unm_idx, src_idx, dst_idx: the bipartite matching's index arrays (see
        :class:`~tofu_jax.matching.Matching`), or None when nothing was removed.
      num_tokens: ``N`` before the reduction.
      protected: leading tokens that never moved.
    """

    unm_idx: jax.Array | None
    src_idx: jax.Array | None
    dst_idx: jax.Array | None
    num_tokens: int = struct.field(pytree_node=False)
    protected: int = struct.field(pytree_node=False, default=0)

    @property
    def r(self) -> int:
        return 0 if self.src_idx is None else self.src_idx.shape[-1]

    @property
    def matching(self) -> Matching | None:
        if self.src_idx is None:
            return None
        return Matching(self.unm_idx, self.src_idx, self.dst_idx, self.protected)

    def restore(self, y: jax.Array) -> jax.Array:
        """Unmerge ``y [B, N - r, ...]`` (computed on the reduced tokens) to ``[B, N, ...]``.

        Kept tokens get their own row of ``y``; each removed token copies the row of the token it was
        matched to (merged into, or -- for prune -- its nearest kept token). Identity when ``r == 0``.
        """
        if self.src_idx is None:
            if y.shape[1] != self.num_tokens:
                raise UserError(f"y has {y.shape[1]} tokens; nothing was reduced from {self.num_tokens}")
            return y
        return merging.unmerge(y, self.matching, self.num_tokens)


@dataclasses.dataclass(frozen=True)
class TokenReducer:
    """One block's token reduction by bipartite soft matching (docs/algorithms.md §2-§3).

    Frozen and hashable, so it can be a Linen module field or a ``jax.jit`` static argument.

    Attributes:
      op: ``"none"``, ``"prune"`` (drop the matched tokens), ``"merge_avg"`` (ToMe size-weighted
        average) or ``"merge_mlerp"`` (ToFu: average direction, max norm).
      r: static number of tokens to remove, ``0 <= r <= (N - protected) // 2``.
      protected: leading tokens that never move (1: a CLS token, 2: CLS + distillation, 1 + R: CLS and
        R register tokens, 0: no prefix tokens). Required: a wrong guess would silently merge a CLS
        token away.
      mlerp_norm: ``"max"`` or ``"weighted_mean"`` (norm rule of ``merge_mlerp``).

    Call as ``x, size, state = reducer(x, size, metric)``: ``x [B, N, C]``, ``size [B, N, 1]`` or None
    (all ones), ``metric [B, N, C']`` (keys averaged over heads, or ``x`` itself). Returns ``N - r``
    tokens and a :class:`ReductionState` whose ``restore(y)`` unmerges a result back to ``N`` tokens;
    for ``op="prune"`` that restore copies each pruned token from its nearest kept token.
    """

    op: str = "merge_mlerp"
    r: int = 0
    protected: int | None = None
    mlerp_norm: str = "max"

    def __post_init__(self):
        if self.op not in reduction.RESTORABLE_OPS:
            raise UserError(
                f"unknown op {self.op!r}; TokenReducer supports {', '.join(reduction.RESTORABLE_OPS)}"
            )
        if not isinstance(self.r, int) or isinstance(self.r, bool) or self.r < 0:
            raise UserError(f"r must be a non-negative int, got {self.r!r}")
        if self.op == "none" and self.r:
            raise UserError(f"op 'none' needs r=0, got r={self.r}")
        if self.protected is None:
            raise ConfigError(
                "TokenReducer needs protected=<number of leading tokens that must never move>: 1 for a "
                "CLS token, 2 for CLS + distillation token, 0 for models without prefix tokens"
            )
        if not isinstance(self.protected, int) or isinstance(self.protected, bool) or self.protected < 0:
            raise ConfigError(f"protected must be a non-negative int, got {self.protected!r}")
        if self.mlerp_norm not in ("max", "weighted_mean"):
            raise UserError(f"mlerp_norm must be 'max' or 'weighted_mean', got {self.mlerp_norm!r}")

    @property
    def active(self) -> bool:
        return self.op != "none" and self.r > 0

    def tokens_after(self, num_tokens: int) -> int:
        """Token count after this reduction; raises :class:`UserError` if ``r`` is too large."""
        limit = reduction.limit(self.op, num_tokens, self.protected)
        if self.r > limit:
            raise UserError(
                f"{self.op} can remove at most {limit} of {num_tokens} tokens with {self.protected} "
                f"protected, got r={self.r}"
            )
        return num_tokens - self.r

    def __call__(
        self, x: jax.Array, size: jax.Array | None, metric: jax.Array
    ) -> tuple[jax.Array, jax.Array, ReductionState]:
        """Reduce ``x [B, N, C]`` -> ``(x [B, N - r, C], size [B, N - r, 1], state)``."""
        if x.ndim != 3:
            raise UserError(f"x must have shape [B, N, C], got {tuple(x.shape)}")
        if metric.shape[:2] != x.shape[:2]:
            raise UserError(
                f"metric must have shape [B, N, C'] with [B, N]={x.shape[:2]}, got {metric.shape}"
            )
        n = x.shape[1]
        if size is None:
            size = jnp.ones(x.shape[:2] + (1,), jnp.float32)
        if not self.active:
            return x, size, ReductionState(None, None, None, n, self.protected)
        inputs = reduction.Inputs(metric, None, self.protected, self.mlerp_norm)
        x, size, _, m = reduction.apply(self.op, x, size, self.r, inputs)
        return x, size, ReductionState(m.unm_idx, m.src_idx, m.dst_idx, n, self.protected)

    def apply(
        self,
        fn: Callable[[jax.Array], jax.Array],
        x: jax.Array,
        metric: jax.Array,
        size: jax.Array | None = None,
    ) -> jax.Array:
        """Merge, run ``fn`` on ``N - r`` tokens, unmerge: ``restore(fn(reduce(x)))``, ``[B, N, C']``.

        The ToMe-for-Stable-Diffusion pattern: ``fn`` (an MLP, a cross-attention) sees fewer tokens
        while the caller's residual stream keeps all of them.
        """
        xr, _, state = self(x, size, metric)
        return state.restore(fn(xr))


def restore_all(states: Sequence[ReductionState], y: jax.Array) -> jax.Array:
    """Undo a chain of reductions (``states`` in the order they were applied) on ``y``."""
    for state in reversed(states):
        y = state.restore(y)
    return y
