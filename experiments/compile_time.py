"""Where a reduced program's compile time goes, and what the persistent cache saves (CPU).

For the bundled model at one batch size: compile seconds (``jit(...).lower(...).compile()``, timed
apart from lowering) and the XLA instruction counts of the unreduced model, ToMe / all-prune /
all-MLERP at the same FLOPs budget, and probes that reduce in one block only. Then the same programs
compiled in a fresh process that reads them from a persistent compile cache.

    python -m experiments.compile_time              # writes experiments/results/compile_time.{json,png}
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import subprocess
import sys
import tempfile
import time

from experiments.common import RESULTS, environment, write_json


def measure(batch: int, budget: float) -> list[dict]:
    import jax
    import jax.numpy as jnp

    from tofu_jax import planner
    from tofu_jax.models.loading import load_model
    from tofu_jax.models.vit import ViT
    from tofu_jax.schedule import from_list

    config, params = load_model()
    model, depth = ViT(config), config.depth
    x = jnp.zeros((batch, config.image_size, config.image_size, config.channels))
    fn = jax.jit(lambda p, x, s: model.apply({"params": p}, x, s), static_argnums=2)
    alloc = lambda op: planner.allocate(config, [op] * depth, budget, prop_attn=True)  # noqa: E731
    schedules = {
        "unreduced": None,
        "tome": alloc("merge_avg"),
        "prune_all": alloc("prune"),
        "mlerp_all": alloc("merge_mlerp"),
        "prune_block0_only": from_list(["prune"] + ["none"] * (depth - 1), [16] + [0] * (depth - 1)),
        "prune_last_only": from_list(["none"] * (depth - 1) + ["prune"], [0] * (depth - 1) + [16]),
    }
    rows = []
    for name, s in schedules.items():
        t0 = time.perf_counter()
        lowered = fn.lower(params, x, s)
        t1 = time.perf_counter()
        text = lowered.compile().as_text()
        t2 = time.perf_counter()
        ops = collections.Counter(re.findall(r"= \S+ (\w[\w-]*)\(", text))
        rows.append({
            "schedule": name, "describe": s.describe() if s else "none", "lower_s": t1 - t0,
            "compile_s": t2 - t1, "fusions": ops["fusion"], "gathers": ops["gather"],
            "scatters": ops["scatter"], "sorts": ops["sort"], "dots": ops["dot"],
            "distinct_token_counts": len(set(s.token_counts(config.num_tokens, config.num_prefix)))
            if s else 1,
        })  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--budget", type=float, default=0.4)
    p.add_argument("--child", choices=["cold", "cached"], help=argparse.SUPPRESS)
    p.add_argument("--cache-dir", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        from tofu_jax import compile_cache

        compile_cache.enable(args.cache_dir)
        for row in measure(args.batch, args.budget):
            print("ROW " + json.dumps(row | {"run": args.child}), flush=True)
        return
    rows = []
    with tempfile.TemporaryDirectory() as cache:
        for run in ("cold", "cached"):  # each in a fresh process: the second reads the first's cache
            cmd = [sys.executable, "-m", "experiments.compile_time", "--child", run, "--cache-dir", cache,
                   "--batch", str(args.batch), "--budget", str(args.budget)]  # fmt: skip
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            rows += [json.loads(line[4:]) for line in out.splitlines() if line.startswith("ROW ")]
    base = {r["run"]: r["compile_s"] for r in rows if r["schedule"] == "unreduced"}
    for r in rows:
        r["compile_vs_unreduced_cold"] = r["compile_s"] / base["cold"]
        print(f"{r['run']:6s} {r['schedule']:18s} compile {r['compile_s']:6.2f}s "
              f"({r['compile_vs_unreduced_cold']:5.1f}x unreduced cold)  fusions {r['fusions']:4d}  "
              f"distinct token counts {r['distinct_token_counts']}")  # fmt: skip
    stem = RESULTS / "compile_time"
    write_json(stem.with_suffix(".json"), {"environment": environment(), "batch": args.batch,
                                           "budget": args.budget, "rows": rows})  # fmt: skip
    _plot(rows, stem.with_suffix(".png"))
    print(f"wrote {stem}.json/.png")


def _plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["schedule"] for r in rows if r["run"] == "cold"]
    fig, ax = plt.subplots(figsize=(8, 3.5))
    for k, run in enumerate(("cold", "cached")):
        vals = [next(r["compile_s"] for r in rows if r["run"] == run and r["schedule"] == n) for n in names]
        ax.bar([i + 0.4 * k for i in range(len(names))], vals, width=0.4, label=run)
    ax.set_xticks([i + 0.2 for i in range(len(names))], names, rotation=20)
    ax.set_ylabel("compile seconds (CPU)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
