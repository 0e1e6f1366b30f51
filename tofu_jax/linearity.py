"""The linearity metric of docs/algorithms.md §6: how far a function is from linear between pairs of tokens.

    L = E ||f(a x1 + (1-a) x2) - (a f(x1) + (1-a) f(x2))||^2  /  E ||f(x1) - f(x2)||^2

L near 0 means averaging two tokens before ``f`` is nearly the same as averaging after: merging is
safe there. Large L means ``f`` bends between them: prefer pruning.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from tofu_jax.errors import UserError

DEFAULT_ALPHAS = (0.25, 0.5, 0.75)


def interpolation_errors(
    f: Callable[[jax.Array], jax.Array],
    x1: jax.Array,
    x2: jax.Array,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
) -> tuple[jax.Array, jax.Array]:
    """Numerator and denominator terms of the metric, per alpha.

    Args:
      f: maps ``[P, C] -> [P, C']`` row-wise (e.g. LayerNorm -> MLP).
      x1, x2: ``[P, C]`` token pairs.
    Returns:
      ``(err [len(alphas)], spread [])``: mean squared interpolation error per alpha and the mean
      squared output distance ``E ||f(x1) - f(x2)||^2``.
    """
    if x1.shape != x2.shape or x1.ndim != 2:
        raise UserError(f"x1 and x2 must both be [P, C], got {x1.shape} and {x2.shape}")
    x1, x2 = x1.astype(jnp.float32), x2.astype(jnp.float32)
    f1, f2 = f(x1), f(x2)
    errs = []
    for a in alphas:
        if not 0.0 <= a <= 1.0:
            raise UserError(f"alphas must lie in [0, 1], got {a}")
        mixed = f(a * x1 + (1 - a) * x2)
        errs.append(jnp.mean(jnp.sum((mixed - (a * f1 + (1 - a) * f2)) ** 2, axis=-1)))
    spread = jnp.mean(jnp.sum((f1 - f2) ** 2, axis=-1))
    return jnp.stack(errs), spread


def linearity(
    f: Callable[[jax.Array], jax.Array],
    x1: jax.Array,
    x2: jax.Array,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    eps: float = 1e-12,
) -> jax.Array:
    """Scalar linearity score L (mean over alphas) of ``f`` on pairs ``x1, x2 [P, C]``; 0 = linear."""
    err, spread = interpolation_errors(f, x1, x2, alphas)
    return jnp.mean(err) / jnp.maximum(spread, eps)
