"""GPU throughput of ViT-B/16 (random weights, bf16): baseline vs ToMe r=16 vs ToFu at ToMe's FLOPs, + timm.

Each JAX variant is compiled once (``jit(fn).lower(...).compile()``, timed apart), warmed up, and the
timed runs of all variants (timm's too, when torch+timm+CUDA are present) are interleaved; medians.
Memory: the compiled program's temp + argument + output bytes (timm: torch.cuda.max_memory_allocated).

    PYTHONPATH=. python3 experiments/gpu_bench.py                     # GPU, batch 256
    PYTHONPATH=. JAX_PLATFORMS=cpu python experiments/gpu_bench.py --model Ti/16 --image-size 64 \
        --batch 8 --runs 2 --warmup 1 --r 2 --out /tmp/gb            # tiny CPU smoke test
"""

import argparse
import csv
import os
import statistics
import time
from pathlib import Path

import jax
import numpy as np

from experiments.common import RESULTS, environment, write_json
from tofu_jax import planner, schedule
from tofu_jax.attention import IMPLEMENTATION_ENV
from tofu_jax.flops import model_flops
from tofu_jax.models.vit import ViT, init_params, preset

MEM_KEYS = ("temp_size_in_bytes", "argument_size_in_bytes", "output_size_in_bytes")


def compiled_memory(compiled) -> dict:
    m = compiled.memory_analysis()
    out = {k: None if m is None else int(getattr(m, k, 0) or 0) for k in MEM_KEYS}
    return out | {"program_bytes": None if m is None else sum(out.values())}


def timm_runner(images: np.ndarray):
    """A blocking callable running timm's ViT-B/16 in bf16 on CUDA, or None (with a note) if unavailable."""
    try:
        import timm
        import torch
    except Exception as e:  # ImportError, or a broken torchvision/CUDA build
        return print(f"note: timm_baseline skipped ({e})")
    if not torch.cuda.is_available():
        return print("note: timm_baseline skipped (no CUDA for torch)")
    model = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=1000).eval()
    model = model.to("cuda").to(torch.bfloat16)
    xt = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to("cuda", torch.bfloat16)

    def run():
        with torch.inference_mode():
            model(xt)
        torch.cuda.synchronize()

    return run


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="B/16")
    for flag, default in (("--image-size", 224), ("--batch", 256), ("--runs", 10), ("--warmup", 3)):
        p.add_argument(flag, type=int, default=default)
    p.add_argument("--r", type=int, default=16, help="ToMe's tokens merged per block")
    p.add_argument("--no-timm", action="store_true", help="skip the timm (PyTorch) reference")
    p.add_argument(
        "--attention", nargs="+", default=["auto"], choices=["auto", "xla", "cudnn"],
        help="attention backends to time (tofu_jax.attention: auto = cuDNN on GPU for bf16)",
    )  # fmt: skip
    p.add_argument("--out", help="output stem (default experiments/results/gpu/bench_b16_<device>)")
    args = p.parse_args(argv)

    config = preset(args.model, num_classes=1000, dtype="bfloat16", image_size=args.image_size)
    params, model, depth = init_params(config, 0), ViT(config), config.depth
    flops = lambda s: model_flops(config, s).total
    tome = schedule.tome_clamped(config.depth, args.r, config.num_tokens, config.num_prefix, prop_attn=True)
    budget = 1 - flops(tome) / flops(None)  # ToFu gets ToMe's FLOPs
    tofu_ops = ["prune"] * (depth // 2) + ["merge_mlerp"] * (depth - depth // 2)
    tofu = planner.allocate(config, tofu_ops, budget, prop_attn=True)
    schedules = {"baseline": None, f"tome_r{args.r}": tome, "tofu": tofu}
    shape = (args.batch, args.image_size, args.image_size, 3)
    images = np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)
    x = jax.device_put(images)

    runners, info, bases = {}, {}, dict(schedules)
    for backend in args.attention:
        os.environ[IMPLEMENTATION_ENV] = backend  # read while tracing
        for base, s in bases.items():
            name = base if len(args.attention) == 1 else f"{base}[{backend}]"
            schedules.setdefault(name, s)
            fn = lambda params, x, s=s: model.apply({"params": params}, x, s)
            t = time.perf_counter()
            compiled = jax.jit(fn).lower(params, x).compile()
            info[name] = {"compile_s": time.perf_counter() - t, **compiled_memory(compiled)}
            runners[name] = lambda c=compiled: c(params, x).block_until_ready()
            print(f"compiled {name:9s} in {info[name]['compile_s']:.1f}s", flush=True)
    if not args.no_timm and (run := timm_runner(images)) is not None:
        runners["timm_baseline"], info["timm_baseline"] = run, {"compile_s": None}
    times = {name: [] for name in runners}
    for _ in range(args.warmup):
        for run in runners.values():
            run()
    for _ in range(args.runs):
        for name, run in runners.items():
            t = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - t)
    if "timm_baseline" in runners:
        info["timm_baseline"]["program_bytes"] = __import__("torch").cuda.max_memory_allocated()

    rows, base_med = [], statistics.median(times[next(iter(runners))])
    for name in runners:
        s, med = schedules.get(name), statistics.median(times[name])
        ratio, speedup = flops(s) / flops(None), base_med / med
        rows.append({
            "name": name, "schedule": s.describe() if s else "none", "batch": args.batch,
            "compile_s": info[name]["compile_s"], "median_s": med, "images_per_s": args.batch / med,
            "speedup": speedup, "gflops": flops(s) / 1e9, "ideal_speedup": 1 / ratio,
            "realised_over_ideal": speedup * ratio,
            **{k: info[name].get(k) for k in ("program_bytes", *MEM_KEYS)},
        })  # fmt: skip
    peak = (jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use")
    env = environment() | {"peak_bytes_in_use": peak}
    stem = args.out or str(RESULTS / "gpu" / f"bench_b16_{env['device'].replace(' ', '')}")
    meta = {"model": args.model, "config": config.to_dict(), "random_weights": True, "budget": budget}
    write_json(Path(stem + ".json"), {"environment": env, "args": vars(args), "model": meta, "rows": rows})
    with open(stem + ".csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"\n{env['device']}  {args.model} batch {args.batch}  runs {args.runs}  budget {budget:.1%}")
    print("variant            img/s  speedup  ideal  real/id  GFLOPs  compile  mem MiB  schedule")
    for r in rows:
        comp = "       -" if r["compile_s"] is None else f"{r['compile_s']:7.1f}s"
        mem = "       -" if r["program_bytes"] is None else f"{r['program_bytes'] / 2**20:8.0f}"
        real, ideal = r["realised_over_ideal"], r["ideal_speedup"]
        print(f"{r['name']:14s} {r['images_per_s']:9.1f} {r['speedup']:7.2f}x {ideal:5.2f}x {real:8.0%} "
              f"{r['gflops']:7.2f} {comp} {mem}  {r['schedule']}")  # fmt: skip
    print(f"JAX peak_bytes_in_use: {peak / 2**20:.0f} MiB" if peak else "JAX peak_bytes_in_use: n/a")
    print(f"wrote {stem}.json/.csv")


if __name__ == "__main__":
    main()
