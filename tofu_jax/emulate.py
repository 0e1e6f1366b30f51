"""Fixed-shape emulation of any reduction schedule, for scoring many schedules without recompiling.

A physically reduced program has one static shape per block, so every new schedule is a new XLA
program (seconds to compile). The emulator keeps the token axis at a fixed length instead: the ``n``
live tokens sit at positions ``0..n-1`` in exactly the order the physical ops produce, and the
positions after them are dead (size 0, so the ``log(size)`` attention bias of -inf hides them as
keys). The op and ``r`` of a block are runtime values, so one program per token-axis length runs every
schedule; :class:`Emulator` runs block by block, trims the axis to a multiple of ``bucket`` as tokens
go, and caches the state after each schedule prefix. Logits equal those of the static program (tests
hold them to 1e-5 in float32); the chosen schedule then runs as the usual static program.

The order rule reproduced here (docs/algorithms.md §2-3): bipartite ops return the protected prefix
tokens in their original order, then the kept A tokens ascending, then the B tokens ascending
(:func:`tofu_jax.matching.join`); importance ops keep the survivors in their original order.
"""

from __future__ import annotations

import collections

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tofu_jax.matching import protected_split, unit_features
from tofu_jax.merging import safe_norm
from tofu_jax.schedule import OPS, Schedule

_EPS = 1e-6
OP_INDEX = {op: i for i, op in enumerate(OPS)}


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


def _bipartite(x, size, n, r, metric, *, protected, rule, norm):
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


def _importance(x, size, n, r, metric, scores, *, protected, rule, norm):
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


def reduce_runtime(x, size, n, op, r, metric, scores, *, protected: int, mlerp_norm: str = "max"):
    """Apply op number ``op`` (an index into :data:`tofu_jax.schedule.OPS`) with runtime ``r``.

    Args:
      x: ``[B, N, D]`` with the ``n`` live tokens first.  size: ``[B, N, 1]``, 0 for dead tokens.
      n, op, r: int32 scalars (traced).  metric: ``[B, N, C]`` matching features.
      scores: ``[B, N]`` importance (CLS attention or key norm).
    Returns:
      ``(x, size)`` of the same shapes, with ``n - r`` live tokens first.
    """
    kw = dict(protected=protected, norm=mlerp_norm)
    branches = {
        "none": lambda: (x, size),
        "prune": lambda: _bipartite(x, size, n, r, metric, rule=None, **kw),
        "merge_avg": lambda: _bipartite(x, size, n, r, metric, rule="avg", **kw),
        "merge_mlerp": lambda: _bipartite(x, size, n, r, metric, rule="mlerp", **kw),
        "prune_importance": lambda: _importance(x, size, n, r, metric, scores, rule=None, **kw),
        "merge_importance_mlerp": lambda: _importance(x, size, n, r, metric, scores, rule="mlerp", **kw),
        "merge_importance_avg": lambda: _importance(x, size, n, r, metric, scores, rule="avg", **kw),
    }
    index = jnp.where(r == 0, 0, op)
    return jax.lax.switch(index, [branches[o] for o in OPS])


class Emulator:
    """Logits of a ViT under any schedule on fixed images, without one compile per schedule.

    Args:
      model: a :class:`~tofu_jax.models.vit.ViT`.  params: its parameters.
      images: ``[B, H, W, C]`` images to score on (kept on device).
      bucket: the token axis is trimmed to a multiple of this as tokens go (one program per length);
        default: an eighth of the tokens, so at most nine programs per batch shape.
      cache_states: block states kept for reuse by schedules that share a prefix.
    """

    def __init__(self, model, params, images, *, bucket: int | None = None, cache_states: int = 96):
        from tofu_jax.models.vit import Encoder1DBlock  # the model imports this module

        self.config = c = model.config
        self.params = params
        self.images = jnp.asarray(images)
        self.bucket = bucket or max(8, -(-c.num_tokens // 8))
        self._states: collections.OrderedDict = collections.OrderedDict()
        self._cache_states = cache_states
        last = f"encoderblock_{c.depth - 1}"

        def embed(params, images):
            seen = {}

            def first_block_input(next_fun, args, kwargs, context):
                if isinstance(context.module, Encoder1DBlock) and context.method_name == "__call__":
                    if context.module.name == "encoderblock_0":
                        seen["x"], seen["size"] = args[0], args[1]
                    return args[0], args[1], args[2]
                return next_fun(*args, **kwargs)

            with nn.intercept_methods(first_block_input):
                model.apply({"params": params}, images)
            return seen["x"], seen["size"]

        def head(params, images, x, size):
            def final_state(next_fun, args, kwargs, context):
                if isinstance(context.module, Encoder1DBlock) and context.method_name == "__call__":
                    if context.module.name == last:
                        return x, size, args[2]
                    return args[0], args[1], args[2]
                return next_fun(*args, **kwargs)

            with nn.intercept_methods(final_state):
                return model.apply({"params": params}, images)

        def block(block_params, x, size, n, op, r, *, prop_attn, mlerp_norm, metric):
            module = Encoder1DBlock(c, "runtime", 0, prop_attn, mlerp_norm, metric)
            out, size, _ = module.apply({"params": block_params}, x, size, None, runtime=(n, op, r))
            return out, size

        self._embed = jax.jit(embed)
        self._head = jax.jit(head)
        self._block = jax.jit(block, static_argnames=("prop_attn", "mlerp_norm", "metric"))
        self._x0, self._size0 = self._embed(params, self.images)

    def _length(self, n: int) -> int:
        return min(self._x0.shape[1], -(-n // self.bucket) * self.bucket)

    def logits(self, schedule: Schedule) -> np.ndarray:
        """``[B, num_classes]`` float32 logits of ``schedule`` (validated against the model)."""
        c = self.config
        counts = schedule.validate(c.depth, c.num_tokens, c.num_prefix)
        options = (schedule.prop_attn, schedule.mlerp_norm, schedule.metric)
        start, x, size = 0, self._x0, self._size0
        for depth in range(c.depth, 0, -1):  # longest cached prefix
            state = self._states.get((options, schedule.blocks[:depth]))
            if state is not None:
                self._states.move_to_end((options, schedule.blocks[:depth]))
                start, (x, size) = depth, state
                break
        blocks = self.params["Transformer"]
        for i in range(start, c.depth):
            b = schedule.blocks[i]
            length = self._length(counts[i])
            x, size = self._block(
                blocks[f"encoderblock_{i}"], x[:, :length], size[:, :length],
                np.int32(counts[i]), np.int32(OP_INDEX[b.op]), np.int32(b.r),
                prop_attn=options[0], mlerp_norm=options[1], metric=options[2],
            )  # fmt: skip
            self._remember((options, schedule.blocks[: i + 1]), (x, size))
        return np.asarray(self._head(self.params, self.images, x, size))

    def _remember(self, key, state) -> None:
        self._states[key] = state
        if len(self._states) > self._cache_states:
            self._states.popitem(last=False)


def fidelity(reference: np.ndarray, logits: np.ndarray) -> dict:
    """Label-free fidelity of reduced logits to the unreduced model's.

    Args:
      reference, logits: ``[B, K]`` logits of the unreduced and the reduced model on the same images.
    Returns:
      ``{"kl": mean KL(p_ref || p), "agreement": top-1 agreement}`` plus per-image ``kl_per_image``.
    """
    ref = jax.nn.log_softmax(jnp.asarray(reference, jnp.float32), axis=-1)
    red = jax.nn.log_softmax(jnp.asarray(logits, jnp.float32), axis=-1)
    per_image = np.asarray(jnp.sum(jnp.exp(ref) * (ref - red), axis=-1), np.float64)
    agree = np.asarray(reference).argmax(-1) == np.asarray(logits).argmax(-1)
    return {"kl": float(per_image.mean()), "agreement": float(agree.mean()), "kl_per_image": per_image}
