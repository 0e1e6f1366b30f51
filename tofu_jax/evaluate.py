"""Accuracy over a dataset and throughput of a compiled model (SPEC §9)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np

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
    for images, labels, valid in batches:
        logits = apply(params, jnp.asarray(images), schedule)
        logits = np.asarray(logits)[:valid]
        if not np.all(np.isfinite(logits)):
            raise FloatingPointError("model produced NaN/Inf logits")
        labels = np.asarray(labels)[:valid]
        top = np.argsort(-logits, axis=-1)[:, :5]
        correct1 += int((top[:, 0] == labels).sum())
        correct5 += int((top == labels[:, None]).any(-1).sum())
        total += valid
        if progress:
            progress(valid)
    if total == 0:
        raise ValueError("no examples to evaluate")
    return {"top1": correct1 / total, "top5": correct5 / total, "n": total}


def throughput(
    apply: Callable,
    params,
    images: jax.Array,
    schedule: Schedule | None = None,
    *,
    warmup: int = 2,
    runs: int = 5,
    min_seconds: float = 0.0,
) -> dict:
    """Images/s of a compiled forward pass: compile, warm up, then the median of ``runs`` timings."""
    images = jnp.asarray(images)
    t0 = time.perf_counter()
    apply(params, images, schedule).block_until_ready()
    compile_s = time.perf_counter() - t0
    for _ in range(warmup):
        apply(params, images, schedule).block_until_ready()
    times = []
    while len(times) < runs or sum(times) < min_seconds:
        t = time.perf_counter()
        apply(params, images, schedule).block_until_ready()
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    return {
        "images_per_s": images.shape[0] / med,
        "median_s": med,
        "runs": len(times),
        "first_call_s": compile_s,
        "batch": int(images.shape[0]),
    }
