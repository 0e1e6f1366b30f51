"""CPU speed against what users run today: PyTorch timm (unreduced, fused attention) and a PyTorch
ToMe-style merge, on the same weights as tofu_jax's unreduced, ToMe-mode and ToFu programs.

Random timm weights are loaded into tofu_jax through its timm loader (logit parity is checked first),
every variant is warmed up, and timings are interleaved round by round in one process, so machine
noise hits all variants alike; each figure is the median of ``--runs`` rounds. ToMe (both libraries)
uses ToMe's constant ``r``; the ToFu plan (prune in the first half of the blocks, MLERP after, the
paper's split) has the same analytic FLOPs. Both frameworks get the same threads.

    python -m experiments.bench_timm                    # ViT-S/16 and the bundled model's shape
    python -m experiments.bench_timm --shapes bundled --runs 9
"""

from __future__ import annotations

import argparse
import csv
import statistics
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from experiments.common import RESULTS, environment, write_json
from experiments.torch_reference import import_timm, tome_forward
from tofu_jax import planner
from tofu_jax.checkpoints.load import adapt
from tofu_jax.checkpoints.torch_formats import convert
from tofu_jax.flops import model_flops
from tofu_jax.models.vit import ViT, ViTConfig, make_apply
from tofu_jax.schedule import constant

SHAPES = {  # name: (timm kwargs, ToMe r, batch)
    "vit_s16": (dict(img_size=224, patch_size=16, in_chans=3, embed_dim=384, depth=12, num_heads=6,
                     mlp_ratio=4.0, num_classes=1000), 13, 16),
    "bundled": (dict(img_size=28, patch_size=2, in_chans=1, embed_dim=96, depth=12, num_heads=3,
                     mlp_ratio=4.0, num_classes=10), 13, 64),
}  # fmt: skip


def _models(torch, timm, kw):
    model = timm.models.vision_transformer.VisionTransformer(**kw).eval()
    with torch.no_grad():
        for p in model.parameters():  # non-zero everywhere (timm zero-initialises biases and the head)
            p.add_(0.02 * torch.randn_like(p))
    config = ViTConfig(
        image_size=kw["img_size"], patch_size=kw["patch_size"], channels=kw["in_chans"],
        num_classes=kw["num_classes"], width=kw["embed_dim"], depth=kw["depth"],
        mlp_dim=int(kw["embed_dim"] * kw["mlp_ratio"]), num_heads=kw["num_heads"],
        gelu_approximate=False, layernorm_eps=1e-6,
    )  # fmt: skip
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    params = adapt(convert(state, "timm", config), config)
    return model, config, params


def _time(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def bench_shape(name, torch, timm, runs, threads):
    kw, r, batch = SHAPES[name]
    model, config, params = _models(torch, timm, kw)
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (batch, config.image_size, config.image_size, config.channels)).astype(np.float32)
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    apply = make_apply(ViT(config))
    xj = jnp.asarray(x)
    tome = constant(config.depth, r, "merge_avg", prop_attn=True)
    budget = 1 - model_flops(config, tome).total / model_flops(config).total
    half = config.depth // 2
    tofu = planner.allocate(config, ["prune"] * half + ["merge_mlerp"] * half, budget, prop_attn=True)
    with torch.inference_mode():
        ref = model(xt).numpy()
        tome_ref = tome_forward(model, xt, r).numpy()
    parity = float(np.abs(np.asarray(apply(params, xj, None)) - ref).max())
    tome_parity = float(np.abs(np.asarray(apply(params, xj, tome)) - tome_ref).max())

    def torch_run(f):
        def run():
            with torch.inference_mode():
                f()

        return run

    variants = {
        "timm": (None, torch_run(lambda: model(xt))),
        "timm_tome": (tome, torch_run(lambda: tome_forward(model, xt, r))),
        "tofu_jax": (None, lambda: apply(params, xj, None).block_until_ready()),
        "tofu_jax_tome": (tome, lambda: apply(params, xj, tome).block_until_ready()),
        "tofu_jax_tofu": (tofu, lambda: apply(params, xj, tofu).block_until_ready()),
    }
    first = {k: _time(f) for k, (_, f) in variants.items()}  # compile / warm-up
    for _, f in variants.values():
        f()
    times = {k: [] for k in variants}
    for _ in range(runs):
        for k, (_, f) in variants.items():
            times[k].append(_time(f))
    base = model_flops(config).total
    ref_ips = batch / statistics.median(times["timm"])
    rows = []
    for k, (sched, _) in variants.items():
        med = statistics.median(times[k])
        ratio = model_flops(config, sched).total / base
        ips = batch / med
        rows.append({
            "shape": name, "variant": k, "batch": batch, "threads": threads, "r": r if "tome" in k else None,
            "schedule": sched.describe() if sched is not None else "none",
            "gflops": model_flops(config, sched).gflops, "flops_ratio": ratio, "images_per_s": ips,
            "spread": (max(times[k]) - min(times[k])) / med, "speedup_vs_timm": ips / ref_ips,
            "ideal_speedup": 1 / ratio, "realised_over_ideal": ips / ref_ips * ratio,
            "first_call_s": first[k], "logit_diff_vs_timm": parity if k == "tofu_jax" else
            tome_parity if k == "tofu_jax_tome" else None,
        })  # fmt: skip
        print(f"{name:8s} {k:14s} {ips:8.1f} img/s  x{ips / ref_ips:4.2f} of timm (ideal x{1 / ratio:4.2f}, "
              f"spread {rows[-1]['spread']:.0%})  {rows[-1]['schedule']}", flush=True)  # fmt: skip
    print(f"{name}: logits vs timm {parity:.2e}; ToMe mode vs the PyTorch ToMe reference {tome_parity:.2e}")
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--out", default=str(RESULTS / "bench_timm"))
    args = p.parse_args(argv)
    import torch

    timm = import_timm()
    threads = torch.get_num_threads()
    rows = [row for name in args.shapes for row in bench_shape(name, torch, timm, args.runs, threads)]
    write_json(
        Path(args.out + ".json"),
        {"environment": environment() | {"torch": torch.__version__, "timm": timm.__version__}, "rows": rows},
    )
    with open(args.out + ".csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    _plot(rows, args.out + ".png")
    print(f"wrote {args.out}.json/.csv/.png")


def _plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = sorted({r["shape"] for r in rows}, key=list(SHAPES).index)
    fig, axes = plt.subplots(1, len(shapes), figsize=(5 * len(shapes), 3.5), squeeze=False)
    for ax, shape in zip(axes[0], shapes, strict=True):
        sel = [r for r in rows if r["shape"] == shape]
        ax.bar([r["variant"] for r in sel], [r["speedup_vs_timm"] for r in sel],
               color=["#999", "#bbb", "#3a7", "#5b9", "#27c"][: len(sel)])  # fmt: skip
        ax.axhline(1.0, color="k", lw=0.5)
        ax.set_title(f"{shape}, batch {sel[0]['batch']}: speed relative to timm")
        ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
