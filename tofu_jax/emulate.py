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

from tofu_jax import parallel
from tofu_jax.models.vit import Encoder1DBlock
from tofu_jax.reduction import OPS
from tofu_jax.schedule import Schedule


class Emulator:
    """Logits of a ViT under any schedule on fixed images, without one compile per schedule.

    Args:
      model: a :class:`~tofu_jax.models.vit.ViT`.  params: its parameters.
      images: ``[B, H, W, C]`` images to score on (kept on the default mesh by
        :func:`tofu_jax.parallel.place_batch`).
      bucket: the token axis is trimmed to a multiple of this as tokens go (one program per length);
        default: an eighth of the tokens, so at most nine programs per batch shape.
      cache_states: block states kept for reuse by schedules that share a prefix.
    """

    def __init__(self, model, params, images, *, bucket: int | None = None, cache_states: int = 96):
        self.config = c = model.config
        self.params = params = parallel.on_mesh(params, parallel.default_mesh())
        self.images = parallel.place_batch(images)
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
            module = Encoder1DBlock(c, "none", 0, prop_attn, mlerp_norm, metric)
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
                np.int32(counts[i]), np.int32(OPS.index(b.op)), np.int32(b.r),
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
