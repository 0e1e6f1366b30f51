"""Does the fidelity planner beat ToMe? Every method at every budget on the same test images.

For each FLOPs budget: ToMe (constant r), ToMe's decreasing schedule, all-MLERP, all-prune, the
paper's half split and the fidelity planner (``tofu``), planned on training images only. Columns:
top-1, top-1 agreement and KL vs the unreduced model, GFLOPs, measured speedup (all schedules of a
budget timed in one interleaved loop), and a paired McNemar test against ToMe (images only one of
the two classifies correctly). Also, on the planner's calibration images: how noisy its KL objective
is next to held-out top-1 (bootstrap).

    python -m experiments.planner_study                                  # bundled model
    python -m experiments.planner_study --checkpoint experiments/results/models/fmnist_p4.npz \\
        --out experiments/results/planner_p4                             # the second model

Writes ``<out>.csv``, ``<out>.json`` and ``<out>.png`` (default ``experiments/results/planner_bundled``).
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import math
import time
from fractions import Fraction
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from experiments.common import RESULTS, environment, write_json
from tofu_jax import compile_cache, planner
from tofu_jax.compare import benchmark
from tofu_jax.data import idx
from tofu_jax.data.transforms import renormalize, to_model_range
from tofu_jax.emulate import Emulator, fidelity
from tofu_jax.flops import model_flops
from tofu_jax.models.loading import load_model
from tofu_jax.models.vit import ViT, make_apply
from tofu_jax.profiler import profile_model
from tofu_jax.schedule import none

BUDGETS = (0.3, 0.4, 0.5, 0.6, 0.7)
METHODS = ("tome", "tome_decreasing", "merge_mlerp", "prune", "half_split", "tofu")


def mcnemar(a_right: np.ndarray, b_right: np.ndarray) -> dict:
    """Exact two-sided McNemar test on paired correctness: ``a_only``, ``b_only`` and ``p``."""
    a_only = int(np.sum(a_right & ~b_right))
    b_only = int(np.sum(b_right & ~a_right))
    n, k = a_only + b_only, min(a_only, b_only)
    tail = Fraction(sum(math.comb(n, i) for i in range(k + 1)), 2**n) if n else Fraction(1)
    return {"a_only": a_only, "b_only": b_only, "p": float(min(Fraction(1), 2 * tail))}


def logits_of(apply, params, images, schedule, batch):
    out = [np.asarray(apply(params, jnp.asarray(images[i : i + batch]), schedule))
           for i in range(0, len(images), batch)]  # fmt: skip
    return np.concatenate(out)


def objective_noise(emulator, reference, labels, schedules: dict, rng, resamples: int) -> dict:
    """Bootstrap over calibration images: how often each objective's winner changes, and the
    planner-vs-ToMe difference in units of its bootstrap standard error."""
    n = len(labels)
    per = {}
    for name, s in schedules.items():
        lg = emulator.logits(s)
        fid = fidelity(reference, lg)
        per[name] = {"kl": fid["kl_per_image"], "wrong": (lg.argmax(-1) != labels).astype(np.float64)}
    names = list(per)
    draws = rng.integers(0, n, (resamples, n))
    out = {}
    for key in ("kl", "wrong"):
        values = np.stack([per[m][key] for m in names])  # [methods, n]
        full_best = names[int(values.mean(1).argmin())]
        boot = values[:, draws].mean(-1)  # [methods, resamples]
        winners = np.array(names)[boot.argmin(0)]
        diff = boot[names.index("tofu")] - boot[names.index("tome")]
        full_diff = values[names.index("tofu")].mean() - values[names.index("tome")].mean()
        out["kl" if key == "kl" else "top1"] = {
            "winner": full_best,
            "winner_stability": float(np.mean(winners == full_best)),
            "tofu_minus_tome": float(full_diff),
            "z": float(abs(full_diff) / max(diff.std(), 1e-12)),
        }
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="model .npz with its card beside it (default: the bundled model)")
    p.add_argument("--data-dir", help="directory with the Fashion-MNIST IDX files")
    p.add_argument("--budgets", type=float, nargs="+", default=list(BUDGETS))
    p.add_argument("--num-examples", type=int, default=0, help="test images (0 = the full split)")
    p.add_argument("--calib-images", type=int, default=256, help="training images for the profile")
    p.add_argument(
        "--plan-images", type=int, default=128, help="the first calibration images, for the planner"
    )
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--bench-batch", type=int, default=64)
    p.add_argument("--bench-runs", type=int, default=5)
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(RESULTS / "planner_bundled"))
    args = p.parse_args(argv)
    compile_cache.enable()
    t_start = time.time()
    config, params = load_model(args.checkpoint)
    train_x, train_y = idx.load_split("train", args.data_dir)
    test_x, test_y = idx.load_split("test", args.data_dir)
    rng = np.random.default_rng(args.seed)
    calib = np.sort(rng.permutation(len(train_x))[: args.calib_images])
    prep = lambda x: renormalize(to_model_range(x), config.input_norm)
    calib_x, calib_y = prep(train_x[calib]), train_y[calib]
    if args.num_examples:
        keep = np.sort(rng.permutation(len(test_x))[: args.num_examples])
        test_x, test_y = test_x[keep], test_y[keep]
    test_x = prep(test_x)
    apply = make_apply(ViT(config))
    base_flops = model_flops(config).total
    profile = profile_model(config, params, calib_x, seed=args.seed)
    print(f"model: depth {config.depth}, width {config.width}, {config.num_tokens} tokens; "
          f"{len(test_x)} test images", flush=True)  # fmt: skip
    ref_logits = logits_of(apply, params, test_x, None, args.batch_size)
    ref_right = ref_logits.argmax(-1) == test_y
    plan_x, plan_y = calib_x[: args.plan_images], calib_y[: args.plan_images]
    noise_em = Emulator(ViT(config), params, plan_x, cache_states=8)
    noise_ref = noise_em.logits(none(config.depth))
    rows, budgets_out = [], []
    rows.append({"budget": 0.0, "method": "unreduced", "schedule": "none", "top1": float(ref_right.mean()),
                 "agreement": 1.0, "kl": 0.0, "gflops": base_flops / 1e9, "flops_ratio": 1.0,
                 "speedup": 1.0, "tofu_only": "", "tome_only": "", "mcnemar_p": ""})  # fmt: skip
    partial = Path(f"{args.out}.partial.json")  # budgets done so far: a re-run resumes after them
    done = json.loads(partial.read_text()) if partial.exists() else {"rows": [], "budgets": []}
    rows += done["rows"]
    budgets_out += done["budgets"]
    for budget in args.budgets:
        if any(b["budget"] == budget for b in budgets_out):
            print(f"{budget:.0%}: done in {partial}", flush=True)
            continue
        t0 = time.time()
        pl = planner.plan(profile, config, budget, params=params, images=plan_x,
                          progress=lambda text: print(f"  {text}", flush=True))  # fmt: skip
        plan_s = time.time() - t0
        schedules = planner.baseline_schedules(config, budget)
        schedules.pop("per_block", None)
        schedules["tofu"] = pl.schedule
        logits, right = {}, {}
        for name in METHODS:
            s = schedules[name]
            logits[name] = logits_of(apply, params, test_x, s, args.batch_size)
            right[name] = logits[name].argmax(-1) == test_y
        bench = benchmark(apply, params, {"unreduced": None, **schedules}, test_x[: args.bench_batch],
                          runs=args.bench_runs)  # fmt: skip
        for name in METHODS:
            s = schedules[name]
            fid = fidelity(ref_logits, logits[name])
            test = mcnemar(right["tofu"], right["tome"]) if name == "tofu" else None
            rows.append({
                "budget": budget, "method": name, "schedule": s.describe(),
                "top1": float(right[name].mean()), "agreement": fid["agreement"], "kl": fid["kl"],
                "gflops": model_flops(config, s).gflops,
                "flops_ratio": model_flops(config, s).total / base_flops,
                "speedup": bench[name]["images_per_s"] / bench["unreduced"]["images_per_s"],
                "tofu_only": test["a_only"] if test else "", "tome_only": test["b_only"] if test else "",
                "mcnemar_p": test["p"] if test else "",
            })  # fmt: skip
        noise_rng = np.random.default_rng([args.seed, round(budget * 100)])
        noise = objective_noise(noise_em, noise_ref, plan_y, schedules, noise_rng, args.bootstrap)
        budgets_out.append({
            "budget": budget, "plan_seconds": plan_s, "chosen": pl.info["chosen"],
            "schedule": pl.schedule.describe(), "calibration_kl": pl.info["kl"],
            "candidates": pl.info["candidates"], "linearity": pl.info.get("linearity"),
            "objective_noise": noise,
        })  # fmt: skip
        for r in rows[-len(METHODS) :]:
            print(f"{budget:.0%} {r['method']:<16s} top-1 {r['top1']:.2%}  agree {r['agreement']:.2%}  "
                  f"KL {r['kl']:.4f}  {r['gflops']:.3f} GFLOPs  x{r['speedup']:.2f}  {r['mcnemar_p']}",
                  flush=True)  # fmt: skip
        write_json(partial, {"rows": rows[1:], "budgets": budgets_out})
        del pl, logits
        gc.collect()
        jax.clear_caches()  # each budget's programs are done with; the persistent cache keeps them
    with open(f"{args.out}.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    write_json(Path(f"{args.out}.json"), {
        "environment": environment(), "checkpoint": args.checkpoint or "bundled",
        "config": config.to_dict(), "test_images": len(test_x), "calibration_images": len(calib_x),
        "plan_images": len(plan_x), "rows": rows, "budgets": budgets_out, "wall_s": time.time() - t_start,
    })  # fmt: skip
    plot(rows, f"{args.out}.png", f"{len(test_x)} test images")
    partial.unlink(missing_ok=True)
    print(f"wrote {args.out}.csv/.json/.png ({time.time() - t_start:.0f}s)")


def plot(rows, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    base = next(r for r in rows if r["method"] == "unreduced")
    ax.axhline(base["top1"] * 100, color="gray", ls=":", label="unreduced")
    for m in METHODS:
        pts = sorted((r["gflops"], r["top1"] * 100) for r in rows if r["method"] == m)
        style = dict(lw=2.5, color="black") if m == "tofu" else dict(lw=1.2)
        ax.plot(*zip(*pts, strict=True), marker="o", ms=4, label=m, **style)
    ax.set_xlabel("GFLOPs per image")
    ax.set_ylabel("top-1 (%)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
