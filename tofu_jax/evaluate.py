"""The evaluation loop: accuracy over a dataset on a mesh, and the input checks it runs first.

One loop for one device and for a pod (docs/algorithms.md §9): batches are split over the mesh of
:mod:`tofu_jax.parallel`, padded to a multiple of the device count with masked-out rows, and the
top-1/top-5 counts are summed inside the jitted program, so every example counts exactly once.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from tofu_jax.errors import InputError, NonFiniteError
from tofu_jax.models.vit import ViT, ViTConfig
from tofu_jax.parallel import (
    batch_sharding,
    cache_key,
    default_mesh,
    local_rows,
    on_mesh,
    replicated,
    shard_batch,
    shardings_of,
)
from tofu_jax.schedule import Schedule

_EVAL_CACHE: dict = {}


def _eval_fn(config: ViTConfig, mesh: Mesh, params) -> Callable:
    """``f(params, images, labels, mask, schedule=) -> (logits, [top1, top5, n, nonfinite])`` jitted."""
    key = (config, mesh, *cache_key(params))
    if key not in _EVAL_CACHE:
        model = ViT(config)
        bs, rep = batch_sharding(mesh), replicated(mesh)
        k = min(5, config.num_classes)

        @functools.partial(
            jax.jit,
            static_argnums=(4,),
            in_shardings=(shardings_of(params), bs, bs, bs),
            out_shardings=(bs, rep),
        )
        def evaluate_batch(params, images, labels, mask, schedule: Schedule | None = None):
            logits = model.apply({"params": params}, images, schedule)
            top = jax.lax.top_k(logits, k)[1]
            m = mask.astype(jnp.int32)
            counts = jnp.stack(
                [
                    jnp.sum((top[:, 0] == labels) * m),
                    jnp.sum(jnp.any(top == labels[:, None], axis=-1) * m),
                    jnp.sum(m),
                    jnp.sum(~jnp.all(jnp.isfinite(logits), axis=-1) * m),
                ]
            )
            return logits, counts

        _EVAL_CACHE[key] = evaluate_batch
    return _EVAL_CACHE[key]


def accuracy(
    config: ViTConfig,
    params,
    batches: Iterable[tuple[np.ndarray, np.ndarray, Any]],
    schedule: Schedule | None = None,
    mesh: Mesh | None = None,
    *,
    progress: Callable[[int], None] | None = None,
    return_logits: bool = False,
) -> dict:
    """Top-1/top-5 over ``(images, labels, valid)`` batches, sharded over ``mesh``.

    Each process passes its own batches (all processes the same number of them); ``valid`` is an int
    or a bool mask. Batches are padded to a
    multiple of the device count and the padding masked out; the counts are summed over devices inside
    the jitted program, so every example counts exactly once. ``params`` not already on ``mesh`` are
    placed there (replicated, or FSDP on an ``fsdp > 1`` mesh). ``return_logits`` adds ``"logits"``:
    this process's real rows, in order.
    """
    mesh = mesh or default_mesh()
    params = on_mesh(params, mesh)
    f = _eval_fn(config, mesh, params)
    totals = np.zeros(4, np.int64)
    kept = []
    for index, (images, labels, valid) in enumerate(batches):
        check_images(images, f"batch {index}")
        x, y, m = shard_batch(images, labels, valid, mesh)
        logits, counts = f(params, x, y, m, schedule)
        counts = np.asarray(counts)
        if return_logits:
            kept.append(local_rows(logits)[local_rows(m)])
        totals += counts
        if progress:
            progress(int(counts[2]))
    top1, top5, n, bad = (int(v) for v in totals)
    if bad:
        name = schedule.describe() if schedule is not None else "none"
        raise NonFiniteError(
            f"the model produced NaN/Inf logits for {bad} examples with schedule {name}; check the "
            "checkpoint's weights and the dtype (try --dtype float32)"
        )
    if n == 0:
        raise InputError("no examples to evaluate")
    out = {"top1": top1 / n, "top5": top5 / n, "n": n}
    if return_logits:
        out["logits"] = np.concatenate(kept) if kept else np.zeros((0, config.num_classes), np.float32)
    return out


def predict_fn(config: ViTConfig, mesh: Mesh | None = None) -> Callable:
    """``predict(params, images, schedule=None) -> logits [B, K]`` on ``mesh``, through the program
    :func:`accuracy` compiles for the same batch shape (so timing and evaluating a schedule compile
    it once). ``images``: ``[B, H, W, C]``, host or device; ``params`` placed by
    :func:`tofu_jax.parallel.on_mesh`. The logits stay on the mesh (call ``block_until_ready`` to time
    them); on several processes they are the global array of every process's rows, padded as by
    :func:`tofu_jax.parallel.shard_batch`."""
    mesh = mesh or default_mesh()
    filler: dict[int, tuple[jax.Array, jax.Array]] = {}
    last: list = [None, None]  # (params, program): the lookup flattens params, kept off the timed path

    def predict(params, images, schedule: Schedule | None = None):
        if params is not last[0]:
            last[:] = [params, _eval_fn(config, mesh, params)]
        f = last[1]
        b = images.shape[0]
        if b % mesh.size == 0 and jax.process_count() == 1:  # no padding, no host round trip
            if b not in filler:
                sharding = batch_sharding(mesh)
                filler[b] = (
                    jax.device_put(np.zeros(b, np.int32), sharding),
                    jax.device_put(np.ones(b, bool), sharding),
                )
            return f(params, jax.device_put(images, batch_sharding(mesh)), *filler[b], schedule)[0]
        x, y, m = shard_batch(np.asarray(images), np.zeros(b, np.int32), None, mesh)
        logits = f(params, x, y, m, schedule)[0]
        return logits[:b] if jax.process_count() == 1 else logits

    return predict


# Normalised inputs stay within a few units ([-1, 1]; ImageNet mean/std reaches about +-2.7), while
# raw pixels reach 255: anything beyond this bound is un-normalised input.
MAX_ABS_INPUT = 8.0


def check_images(images, where: str = "images") -> None:
    """Raise :class:`InputError` for integer, NaN/Inf or un-normalised (e.g. 0..255) images."""
    images = np.asarray(images)
    if not np.issubdtype(images.dtype, np.floating):
        raise InputError(
            f"{where}: images must be floating point and normalised, got {images.dtype}; "
            "for 0..255 pixels use images / 127.5 - 1"
        )
    if not np.all(np.isfinite(images)):
        raise InputError(f"{where}: images hold NaN or Inf values")
    peak = float(np.abs(images).max()) if images.size else 0.0
    if peak > MAX_ABS_INPUT:
        raise InputError(
            f"{where}: image values reach {peak:g}; the model expects normalised inputs (e.g. [-1, 1]), "
            "not raw pixels: use images / 127.5 - 1 for 0..255 pixels"
        )
