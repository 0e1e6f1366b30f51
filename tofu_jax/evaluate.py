"""Accuracy over a dataset and the input checks every evaluation runs first (docs/algorithms.md §9)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import jax.numpy as jnp
import numpy as np

from tofu_jax.errors import InputError, NonFiniteError
from tofu_jax.schedule import Schedule


def accuracy(
    apply: Callable,
    params,
    batches: Iterable[tuple[np.ndarray, np.ndarray, int]],
    schedule: Schedule | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Top-1 (and top-5) accuracy over ``(images, labels, valid)`` batches; padding rows ignored."""
    correct1 = correct5 = total = 0
    for index, (images, labels, valid) in enumerate(batches):
        check_images(images, f"batch {index}")
        logits = apply(params, jnp.asarray(images), schedule)
        logits = np.asarray(logits)[:valid]
        if not np.all(np.isfinite(logits)):
            name = schedule.describe() if schedule is not None else "none"
            raise NonFiniteError(
                f"the model produced NaN/Inf logits on batch {index} with schedule {name}; "
                "check the checkpoint's weights and the dtype (try --dtype float32)"
            )
        labels = np.asarray(labels)[:valid]
        top = np.argsort(-logits, axis=-1)[:, :5]
        correct1 += int((top[:, 0] == labels).sum())
        correct5 += int((top == labels[:, None]).any(-1).sum())
        total += valid
        if progress:
            progress(valid)
    if total == 0:
        raise InputError("no examples to evaluate")
    return {"top1": correct1 / total, "top5": correct5 / total, "n": total}


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
