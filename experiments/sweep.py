"""Zero-shot accuracy-FLOPs-throughput sweep and ablations.

For every FLOPs budget, five ways to spend it are evaluated on the same test images, and their
throughput is timed in one interleaved loop (ratios comparable within a budget):

* ``tome``      merge_avg in every block, proportional attention (ToMe);
* ``prune``     bipartite prune in every block;
* ``mlerp``     MLERP merge in every block;
* ``tofu_half`` paper-style split: prune in the first half, MLERP in the second;
* ``tofu_plan`` the planner's schedule (``--planner``: the linearity profile's ``per_block`` plan by
  default; ``experiments/planner_study.py`` compares the fidelity planner).

Ablations at ``--ablation-budget``: average vs MLERP (max / weighted-mean norm), proportional
attention on/off, keys vs tokens as similarity, and the split point of the paper-style schedule.

    python experiments/sweep.py                     # bundled model, 2000 test images
    python experiments/sweep.py --num-examples 0    # full test split
    python -m experiments.sweep --num-examples 0 --budgets 0 0.4 0.6 --planner per_block \
        --skip-ablations                                  # the committed results
    python experiments/sweep.py --checkpoint ViT-B_16.npz --model B/16 --dataset imagenet2012 \\
        --data-dir ~/tensorflow_datasets --num-classes 1000   # same table for a published model
"""

from __future__ import annotations

import csv
import time
from pathlib import Path

import numpy as np

from experiments.common import RESULTS, environment, parser, setup, write_json
from tofu_jax import planner
from tofu_jax.compare import compare, format_table
from tofu_jax.profiler import profile_model

BUDGETS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6)


def method_ops(depth: int, plan_ops: list[str]) -> dict[str, tuple[list[str], dict]]:
    half = depth // 2
    return {
        "tome": (["merge_avg"] * depth, {}),
        "prune": (["prune"] * depth, {}),
        "mlerp": (["merge_mlerp"] * depth, {}),
        "tofu_half": (["prune"] * half + ["merge_mlerp"] * (depth - half), {}),
        "tofu_plan": (plan_ops, {}),
    }


def main(argv=None):
    p = parser(__doc__)
    p.add_argument("--budgets", type=float, nargs="+", default=list(BUDGETS))
    p.add_argument("--ablation-budget", type=float, default=0.4)
    p.add_argument("--planner", default="per_block", choices=["per_block", "split", "fidelity"])
    p.add_argument("--plan-images", type=int, default=128, help="calibration images of --planner fidelity")
    p.add_argument("--skip-ablations", action="store_true")
    p.add_argument("--ablations", nargs="+", help="ablation groups to run (default: all)")
    p.add_argument(
        "--ablation-examples", type=int, default=0,
        help="evaluate the ablations on the first N of the sweep's test images (0: all of them)",
    )  # fmt: skip
    args = p.parse_args(argv)
    stem = args.out or str(RESULTS / "sweep")
    t0 = time.time()
    config, params, test_x, test_y, calib_x = setup(args)
    profile = profile_model(config, params, calib_x, seed=args.seed)

    rows = []
    plans = {}
    cache: dict = {}  # schedule -> accuracy: each distinct schedule is evaluated once
    for budget in args.budgets:
        if budget == 0.0:
            schedules = {"baseline": None}
        else:
            pl = planner.plan(profile, config, budget, mode=args.planner, params=params,
                              images=calib_x[: args.plan_images])  # fmt: skip
            plans[budget] = pl.meta(config) | {"schedule": pl.schedule.to_dict()}
            plan_ops = [b.op if b.op != "none" else "merge_mlerp" for b in pl.schedule.blocks]
            schedules = {"baseline": None}
            for name, (ops, opts) in method_ops(config.depth, plan_ops).items():
                schedules[name] = (
                    pl.schedule if name == "tofu_plan" else planner.allocate(config, ops, budget, **opts)
                )
        res = compare(config, params, schedules, test_x, test_y, batch_size=args.batch_size,
                      bench_batch=args.bench_batch, bench_runs=args.bench_runs,
                      accuracy_cache=cache)  # fmt: skip
        for r in res:
            if budget != 0.0 and r["name"] == "baseline":
                continue
            rows.append({"budget": budget, **r})
        print(f"\n== budget {budget:.0%} ({time.time() - t0:.0f}s)\n{format_table(res)}", flush=True)

    abl_x, abl_y, abl_cache = test_x, test_y, cache
    if 0 < args.ablation_examples < len(test_x):  # a subset needs its own accuracy cache
        abl_x, abl_y, abl_cache = test_x[: args.ablation_examples], test_y[: args.ablation_examples], {}
    ablations = [] if args.skip_ablations else run_ablations(args, config, params, abl_x, abl_y, abl_cache)
    fields = ["budget", "name", "schedule", "top1", "top5", "n", "gflops", "flops_ratio", "final_tokens",
              "images_per_s", "speedup", "ideal_speedup", "compile_s", "bench_batch"]  # fmt: skip
    with open(stem + ".csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    if ablations:
        with open(stem + "_ablations.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=["group", *fields, "baseline_top1"], extrasaction="ignore")
            w.writeheader()
            w.writerows(ablations)
    write_json(
        Path(stem + ".json"),
        {"environment": environment(), "args": vars(args), "profile": profile.to_dict(),
         "plans": {str(k): v for k, v in plans.items()}, "rows": rows, "ablations": ablations,
         "wall_s": time.time() - t0},
    )  # fmt: skip
    plot(rows, ablations, stem)
    print(f"wrote {stem}.csv/.json/.png ({time.time() - t0:.0f}s)")


def run_ablations(args, config, params, test_x, test_y, cache):
    b, depth = args.ablation_budget, config.depth
    groups = {
        "merge_rule": {
            "avg": planner.allocate(config, ["merge_avg"] * depth, b, prop_attn=True),
            "mlerp_max": planner.allocate(config, ["merge_mlerp"] * depth, b, prop_attn=True),
            "mlerp_wmean": planner.allocate(
                config, ["merge_mlerp"] * depth, b, prop_attn=True, mlerp_norm="weighted_mean"
            ),
        },
        "prop_attn": {
            "mlerp_on": planner.allocate(config, ["merge_mlerp"] * depth, b, prop_attn=True),
            "mlerp_off": planner.allocate(config, ["merge_mlerp"] * depth, b, prop_attn=False),
            "avg_on": planner.allocate(config, ["merge_avg"] * depth, b, prop_attn=True),
            "avg_off": planner.allocate(config, ["merge_avg"] * depth, b, prop_attn=False),
        },
        "similarity": {
            "keys": planner.allocate(config, ["merge_mlerp"] * depth, b, metric="keys"),
            "tokens": planner.allocate(config, ["merge_mlerp"] * depth, b, metric="tokens"),
        },
        "selection": {
            f"{kind}_{op}": planner.allocate(config, planner.with_selection([op] * depth, kind), b)
            for op in ("prune", "merge_mlerp", "merge_avg")
            for kind in ("redundancy", "importance")
        },
        "split_point": {
            f"split@{k}": planner.allocate(config, ["prune"] * k + ["merge_mlerp"] * (depth - k), b)
            for k in range(0, depth + 1, 3)
        },
    }
    rows = []
    groups = {k: v for k, v in groups.items() if not args.ablations or k in args.ablations}
    for group, schedules in groups.items():
        res = compare(
            config, params, {"baseline": None, **schedules}, test_x, test_y,
            batch_size=args.batch_size, bench_batch=args.bench_batch, bench_runs=args.bench_runs,
            accuracy_cache=cache,
        )  # fmt: skip
        print(f"\n== ablation {group} at {b:.0%}\n{format_table(res)}", flush=True)
        base_top1 = res[0]["top1"]
        rows.extend(
            {"group": group, "budget": b, **r, "baseline_top1": base_top1}
            for r in res
            if r["name"] != "baseline"
        )
    return rows


def plot(rows, ablations, stem):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3 if ablations else 2, figsize=(15 if ablations else 10, 4))
    base = next(r for r in rows if r["name"] == "baseline")
    for name in ["tome", "prune", "mlerp", "tofu_half", "tofu_plan"]:
        pts = sorted([(r["flops_ratio"], r["top1"], r["speedup"]) for r in rows if r["name"] == name])
        if not pts:
            continue
        pts = [(1.0, base["top1"], 1.0), *pts[::-1]]
        x, y, sp = (np.array(v) for v in zip(*pts, strict=True))
        axes[0].plot(100 * (1 - x), 100 * y, "o-", label=name)
        axes[1].plot(100 * (1 - x), sp, "o-", label=name)
    ideal = sorted({r["flops_ratio"] for r in rows})
    axes[1].plot([100 * (1 - f) for f in ideal], [1 / f for f in ideal], "k:", label="FLOPs-ideal")
    axes[0].set(xlabel="FLOPs removed (%)", ylabel="top-1 (%)", title="zero-shot accuracy")
    axes[1].set(xlabel="FLOPs removed (%)", ylabel="speedup vs baseline", title="measured throughput")
    for ax in axes[:2]:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if ablations:
        labels = [f"{r['group']}:{r['name']}" for r in ablations]
        axes[2].barh(labels, [100 * r["top1"] for r in ablations], color="tab:gray")
        abl_base = ablations[0].get("baseline_top1", base["top1"])
        axes[2].axvline(100 * abl_base, color="k", ls=":", lw=0.8)
        n = ablations[0].get("n", base["n"])
        axes[2].set(xlabel=f"top-1 (%), {n} test images",
                    title=f"ablations at {ablations[0]['budget']:.0%} fewer FLOPs")  # fmt: skip
        axes[2].tick_params(axis="y", labelsize=7)
        lo = min(100 * r["top1"] for r in ablations)
        axes[2].set_xlim(max(0, lo - 5), 100 * max(abl_base, max(r["top1"] for r in ablations)) + 1)
    fig.tight_layout()
    fig.savefig(stem + ".png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
