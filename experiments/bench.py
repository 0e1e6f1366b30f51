"""Throughput benchmark: baseline vs ToFu vs ToMe at one FLOPs budget, several batch sizes.

Compilation is excluded (timed separately per schedule), each schedule is warmed up, timings of all
schedules are interleaved and the median of ``--runs`` is reported, so speedups are ratios from one
run. The same script runs on CPU, GPU and TPU without change:

    python experiments/bench.py                                   # bundled model, CPU
    python experiments/bench.py --model B/16 --random --dtype bfloat16 --batches 256   # ViT-B/16 speed
    python experiments/bench.py --batches 64 --runs 7 --variants --out experiments/results/bench_variants
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from experiments.common import RESULTS, environment, write_json
from tofu_jax import cli, compile_cache, planner
from tofu_jax.compare import benchmark
from tofu_jax.flops import model_flops
from tofu_jax.models.vit import ViT, init_params, make_apply


def peak_memory_bytes() -> int | None:
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_model_args(p)
    cli.add_runtime_args(p)
    p.add_argument("--random", action="store_true", help="random weights (speed only; no checkpoint)")
    p.add_argument("--num-classes-random", type=int, default=1000)
    p.add_argument("--batches", type=int, nargs="+", default=[64, 256])
    p.add_argument("--budget", type=float, default=0.4)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--out", help="output stem (default experiments/results/bench_<platform>)")
    p.add_argument(
        "--variants", action="store_true",
        help="also time all-MLERP and ToMe without proportional attention (cost of the size bias)",
    )  # fmt: skip
    args = p.parse_args(argv)
    compile_cache.enable(args.compile_cache)
    if args.random:
        from tofu_jax.models.loading import resolve_config

        config = resolve_config(args.model, image_size=args.image_size, dtype=args.dtype,
                                num_classes=args.num_classes or args.num_classes_random)  # fmt: skip
        params = init_params(config, 0)
    else:
        config, params = cli.model_from_args(args)
    depth = config.depth
    half = depth // 2
    schedules = {
        "baseline": None,
        "tofu": planner.allocate(config, ["prune"] * half + ["merge_mlerp"] * (depth - half), args.budget),
        "tome": planner.allocate(config, ["merge_avg"] * depth, args.budget, prop_attn=True),
    }
    if args.variants:
        b = args.budget
        schedules["mlerp"] = planner.allocate(config, ["merge_mlerp"] * depth, b, prop_attn=True)
        schedules["tome_no_prop"] = planner.allocate(config, ["merge_avg"] * depth, b, prop_attn=False)
    apply = make_apply(ViT(config))
    base_flops = model_flops(config).total
    rows = []
    for batch in args.batches:
        images = jnp.asarray(
            np.random.default_rng(0).uniform(
                -1, 1, (batch, config.image_size, config.image_size, config.channels)
            ),
            dtype=jnp.float32,
        )
        res = benchmark(apply, params, schedules, images, warmup=args.warmup, runs=args.runs)
        ref = res["baseline"]["images_per_s"]
        for name, s in schedules.items():
            ratio = model_flops(config, s).total / base_flops
            speedup = res[name]["images_per_s"] / ref
            rows.append({
                "batch": batch, "name": name, "schedule": s.describe() if s else "none",
                "gflops": model_flops(config, s).gflops, "flops_ratio": ratio,
                "images_per_s": res[name]["images_per_s"], "median_s": res[name]["median_s"],
                "speedup": speedup, "ideal_speedup": 1 / ratio, "realised_over_ideal": speedup * ratio,
                "compile_s": res[name]["first_call_s"], "dtype": config.dtype,
            })  # fmt: skip
            r = rows[-1]
            print(
                f"batch {batch:4d} {name:12s} {r['images_per_s']:9.1f} img/s  speedup {speedup:5.2f}x "
                f"(ideal {1 / ratio:4.2f}x, {speedup * ratio:4.0%} of ideal)  compile {r['compile_s']:5.1f}s",
                flush=True,
            )
    env = environment() | {"peak_memory_bytes": peak_memory_bytes()}
    stem = args.out or str(RESULTS / f"bench_{jax.devices()[0].platform}")
    model_desc = {"config": config.to_dict(), "random_weights": args.random, "budget": args.budget}
    write_json(
        Path(stem + ".json"), {"environment": env, "model": model_desc, "rows": rows, "date": time.time()}
    )
    with open(stem + ".csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {stem}.json/.csv")


if __name__ == "__main__":
    main()
