"""Evaluate several schedules of one model side by side: top-1, GFLOPs, images/s, speedup.

Throughput timings of all schedules are interleaved in one loop so that machine noise hits every
schedule alike; the speedups are ratios measured in the same run (docs/algorithms.md §9).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from tofu_jax.data.batching import batches
from tofu_jax.evaluate import accuracy, predict_fn
from tofu_jax.flops import model_flops
from tofu_jax.models.vit import ViTConfig
from tofu_jax.parallel import default_mesh, on_mesh
from tofu_jax.schedule import Schedule


def benchmark(
    apply: Callable,
    params,
    schedules: dict[str, Schedule | None],
    images: np.ndarray,
    *,
    warmup: int = 1,
    runs: int = 5,
) -> dict[str, dict]:
    """Median images/s per schedule, runs interleaved; also the first call's seconds.

    The first call includes compilation unless ``apply`` already compiled the schedule at this shape.
    """
    x = jnp.asarray(images)
    out: dict[str, dict] = {}
    for name, s in schedules.items():
        t = time.perf_counter()
        apply(params, x, s).block_until_ready()
        out[name] = {"first_call_s": time.perf_counter() - t, "times": []}
        for _ in range(warmup):
            apply(params, x, s).block_until_ready()
    for _ in range(runs):
        for name, s in schedules.items():
            t = time.perf_counter()
            apply(params, x, s).block_until_ready()
            out[name]["times"].append(time.perf_counter() - t)
    for v in out.values():
        v["median_s"] = statistics.median(v["times"])
        v["images_per_s"] = x.shape[0] / v["median_s"]
    return out


def compare(
    config: ViTConfig,
    params,
    schedules: dict[str, Schedule | None],
    images,
    labels: np.ndarray | None,
    *,
    batch_size: int = 64,
    bench_batch: int | None = None,
    bench_runs: int = 5,
    progress: Callable[[str, int], None] | None = None,
    accuracy_cache: dict | None = None,
    mesh=None,
) -> list[dict]:
    """One row per schedule; the first schedule is the reference for speedups.

    Each schedule compiles once: its first evaluation batch is timed (compile + one run), and the
    timing batch defaults to ``batch_size`` so the same program is reused; everything runs on ``mesh``
    (default: every device). ``accuracy_cache`` (schedule -> accuracy dict) lets repeated calls on
    the same model and images skip re-evaluating a schedule; compiled programs are reused anyway.

    ``images``: ``[N, H, W, C]`` with ``labels [N]``, or a
    :class:`~tofu_jax.data.batching.StreamedImages` with ``labels=None``, decoded batch by batch for each
    schedule (a split too large for memory).
    """
    mesh = mesh or default_mesh()
    params = on_mesh(params, mesh)
    apply = predict_fn(config, mesh)
    bench_batch = bench_batch or batch_size
    base_flops = model_flops(config).total
    if labels is None:
        head, eval_batches = images.head, lambda: images.batches(batch_size)
    else:
        head = lambda k: np.resize(images, (k,) + images.shape[1:])
        eval_batches = lambda: batches(images, labels, batch_size)
    first_batch = jnp.asarray(head(batch_size))
    rows = []
    for name, s in schedules.items():
        if progress:
            progress(f"{name}: compiling", 0)
        t = time.perf_counter()
        apply(params, first_batch, s).block_until_ready()
        first_call_s = time.perf_counter() - t
        if accuracy_cache is not None and s in accuracy_cache:
            acc = accuracy_cache[s]
            if progress:
                progress(name, acc["n"])
        else:
            acc = accuracy(
                config,
                params,
                eval_batches(),
                s,
                mesh=mesh,
                progress=(lambda n, name=name: progress(name, n)) if progress else None,
            )
            if accuracy_cache is not None:
                accuracy_cache[s] = acc
        rep = model_flops(config, s)
        rows.append(
            {
                "name": name,
                "schedule": s.describe() if s is not None else "none",
                "top1": acc["top1"],
                "top5": acc["top5"],
                "n": acc["n"],
                "gflops": rep.gflops,
                "flops_ratio": rep.total / base_flops,
                "final_tokens": rep.tokens[-1],
                "first_call_s": first_call_s,
            }
        )
    bench_x = head(bench_batch)
    bench = benchmark(apply, params, schedules, bench_x, runs=bench_runs)
    ref = next(iter(bench.values()))["images_per_s"]
    for row in rows:
        b = bench[row["name"]]
        row.update(
            images_per_s=b["images_per_s"],
            speedup=b["images_per_s"] / ref,
            ideal_speedup=1.0 / row["flops_ratio"],
            compile_s=max(0.0, row["first_call_s"] - b["median_s"] * batch_size / bench_batch),
            bench_batch=bench_batch,
        )
    return rows


def format_table(rows: list[dict]) -> str:
    """Plain-text table of :func:`compare` rows."""
    header = (
        f"{'model':<14}{'top-1':>8}{'GFLOPs':>9}{'FLOPs':>8}{'img/s':>9}{'speedup':>9}{'ideal':>7}  schedule"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r['name']:<14}{100 * r['top1']:>7.2f}%{r['gflops']:>9.4f}{100 * r['flops_ratio']:>7.1f}%"
            f"{r['images_per_s']:>9.1f}{r['speedup']:>8.2f}x{r['ideal_speedup']:>6.2f}x  {r['schedule']}"
        )
    return "\n".join(lines)


def device_description() -> str:
    d = jax.devices()[0]
    return f"{d.platform}:{getattr(d, 'device_kind', '')} x{jax.device_count()}"
