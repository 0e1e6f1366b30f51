"""Fixed-shape variants of the reduction ops: runtime ``n`` and ``r``, dead tokens of size 0.

A physically reduced program has one static shape per block. These variants keep the token axis at
its length instead: the ``n`` live tokens sit at positions ``0..n-1`` in exactly the order the
physical op produces (docs/algorithms.md §2-3: protected prefix tokens as they were, then the kept A
tokens ascending, then the B tokens ascending for bipartite ops; survivors in original order for
importance ops), and the positions after them have size 0, so the ``log(size)`` attention bias of
-inf hides them as keys. ``n`` and ``r`` may be traced int32 scalars, so one program serves every
schedule (:mod:`tofu_jax.emulate`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from tofu_jax.matching import protected_split, unit_features
from tofu_jax.merging import safe_norm

_EPS = 1e-6


def _scatter_add(target: jax.Array, idx: jax.Array, vals: jax.Array) -> jax.Array:
    """Per-batch ``target[idx] += vals``: ``[B, M, C]``, ``[B, K]``, ``[B, K, C]``."""
    return jax.vmap(lambda t, i, v: t.at[i].add(v))(target, idx, vals)


def _scatter_max(target: jax.Array, idx: jax.Array, vals: jax.Array) -> jax.Array:
    return jax.vmap(lambda t, i, v: t.at[i].max(v))(target, idx, vals)


def _take(x: jax.Array, idx: jax.Array) -> jax.Array:
    return jnp.take_along_axis(x, idx[..., None], axis=1)


def _combine(x_dst, s_dst, x_src, w_src, dst, rule: str, norm: str):
    """Fold weighted sources into destinations (ToMe average or MLERP); ``w_src`` is 0 for non-sources.

    ``x_dst [B, M, C]``, ``s_dst [B, M, 1]``; sources ``[B, K, ...]`` with destination index ``dst [B, K]``.
    Returns ``(x [B, M, C], size [B, M, 1])``.
    """
    new_size = s_dst + _scatter_add(jnp.zeros_like(s_dst), dst, w_src)
    count = _scatter_add(jnp.zeros_like(s_dst), dst, (w_src > 0).astype(jnp.float32))
    safe_size = jnp.where(new_size > 0, new_size, 1.0)
    avg = _scatter_add(x_dst * s_dst, dst, x_src * w_src) / safe_size
    if rule == "mlerp":
        n_dst, n_src = safe_norm(x_dst), safe_norm(x_src)
        if norm == "max":  # non-sources contribute norm 0, which never wins a max of norms
            target = _scatter_max(n_dst, dst, jnp.where(w_src > 0, n_src, 0.0))
        else:
            target = _scatter_add(n_dst * s_dst, dst, n_src * w_src) / safe_size
        avg = avg * (target / jnp.maximum(safe_norm(avg), _EPS))
    return jnp.where(count > 0, avg, x_dst), new_size


def _reorder(x, size, key, n_out):
    """Gather tokens by ascending ``key [B, N]`` and zero the sizes from position ``n_out`` on."""
    order = jnp.argsort(key, axis=-1, stable=True)
    x, size = _take(x, order), _take(size, order)
    alive = jnp.arange(x.shape[1])[None, :, None] < n_out
    return x, jnp.where(alive, size, 0.0)


def bipartite(x, size, n, r, metric, *, protected, rule, norm):
    """Emulated bipartite prune (``rule=None``) or merge of ``r`` tokens among the first ``n``."""
    big = x.shape[1]
    pos = jnp.arange(big)
    a_pos, b_pos = pos[::2], pos[1::2]
    a_alive, b_alive = a_pos < n, b_pos < n
    unit = unit_features(metric)
    scores = jnp.einsum("bic,bjc->bij", unit[:, ::2], unit[:, 1::2])
    scores = jnp.where(b_alive[None, None, :], scores, -jnp.inf)
    protected_a, protected_b = protected_split(protected)
    scores = scores.at[:, :protected_a, :].set(-jnp.inf).at[:, :, :protected_b].set(-jnp.inf)
    node_max = scores.max(axis=-1)
    dst = scores.argmax(axis=-1).astype(jnp.int32)
    key = jnp.where(a_alive[None], -node_max, jnp.inf)  # dead A tokens rank after every live one
    rank = jnp.argsort(jnp.argsort(key, axis=-1, stable=True), axis=-1)
    is_src = a_alive[None] & (rank < r)
    is_unm = a_alive[None] & ~is_src
    xa, xb = x[:, ::2].astype(jnp.float32), x[:, 1::2].astype(jnp.float32)
    sa, sb = size[:, ::2], size[:, 1::2]
    if rule is not None:
        w = jnp.where(is_src[..., None], sa, 0.0)
        xb, sb = _combine(xb, sb, xa, w, dst, rule, norm)
    # Output order (matching.join): protected tokens as they were, other kept A, other B tokens.
    free_unm = is_unm & (a_pos[None] >= protected)
    a_out = protected + jnp.cumsum(free_unm, axis=-1) - 1
    b_out = protected + free_unm.sum(axis=-1, keepdims=True) + jnp.arange(b_pos.shape[0])[None] - protected_b
    a_out = jnp.where(a_pos[None] < protected, a_pos[None], a_out)
    b_out = jnp.where(b_pos[None] < protected, b_pos[None], b_out)
    a_key = jnp.where(is_unm, a_out, big + a_pos[None])
    b_key = jnp.where(b_alive[None], b_out, big + b_pos[None])
    key = jnp.zeros((x.shape[0], big), jnp.int32).at[:, ::2].set(a_key).at[:, 1::2].set(b_key)
    merged = jnp.zeros_like(x, jnp.float32).at[:, ::2].set(xa).at[:, 1::2].set(xb)
    sizes = jnp.zeros_like(size).at[:, ::2].set(sa).at[:, 1::2].set(sb)
    out, sizes = _reorder(merged, sizes, key, n - r)
    return out.astype(x.dtype), sizes


def importance(x, size, n, r, metric, scores, *, protected, rule, norm):
    """Emulated importance prune (``rule=None``) or merge of the ``r`` least important live tokens."""
    big = x.shape[1]
    pos = jnp.arange(big)
    alive = pos[None] < n
    ranked = jnp.where(alive, scores.astype(jnp.float32), -jnp.inf)
    if protected:
        ranked = ranked.at[:, :protected].set(jnp.inf)
    rank = jnp.argsort(jnp.argsort(-ranked, axis=-1, stable=True), axis=-1)
    keep = alive & (rank < n - r)
    xf = x.astype(jnp.float32)
    sizes = size
    if rule is not None:
        unit = metric.astype(jnp.float32)
        unit = unit / jnp.maximum(safe_norm(unit), _EPS)
        sim = jnp.einsum("bic,bjc->bij", unit, unit)
        target_ok = keep & (pos[None] >= protected)
        sim = jnp.where(target_ok[:, None, :], sim, -jnp.inf)
        dst = sim.argmax(axis=-1).astype(jnp.int32)
        w = jnp.where((alive & ~keep)[..., None], size, 0.0)
        xf, sizes = _combine(xf, jnp.where(keep[..., None], size, 0.0), xf, w, dst, rule, norm)
    key = jnp.where(keep, pos[None], big + pos[None])
    out, sizes = _reorder(xf, sizes, key, n - r)
    return out.astype(x.dtype), sizes
