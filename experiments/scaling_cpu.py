"""Time a jitted, batch-sharded ViT forward on 1, 2, 4, 8 forced CPU host devices.

``--xla_force_host_platform_device_count`` splits one machine's CPU into N JAX devices that share the
same cores, so this measures the overhead and correctness of the sharded program (same logits on
every device count), not a speedup. Each device count runs in its own process (the flag must be set
before JAX starts):

    python experiments/scaling_cpu.py            # writes experiments/results/scaling_cpu.json

Model: width 96, depth 4, 3 heads, MLP 384, 28x28x1 images with patch 2 -> 196 patches + CLS = 197
tokens (the bundled Fashion-MNIST ViT's shape at depth 4), random weights, global batch 64.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

CONFIG = dict(
    image_size=28, patch_size=2, channels=1, num_classes=10, width=96, depth=4, mlp_dim=384, num_heads=3
)
OUT = Path(__file__).parent / "results" / "scaling_cpu.json"


def worker(batch: int, runs: int) -> dict:
    import jax
    import numpy as np

    from tofu_jax import evaluate
    from tofu_jax import parallel as par
    from tofu_jax.models.vit import ViTConfig, init_params

    config = ViTConfig(**CONFIG)
    params = init_params(config, seed=0)
    rng = np.random.default_rng(0)
    # non-zero head so the logits say something about the whole network
    params["head"]["kernel"] = rng.normal(0, 0.1, params["head"]["kernel"].shape).astype(np.float32)
    images = rng.uniform(-1, 1, (batch, 28, 28, 1)).astype(np.float32)

    mesh = par.make_mesh()
    placed = par.shard_tree(params, mesh)
    x = jax.device_put(images, par.batch_sharding(mesh))
    predict = evaluate.predict_fn(config, mesh)
    t = time.perf_counter()
    logits = predict(placed, x).block_until_ready()
    first = time.perf_counter() - t
    predict(placed, x).block_until_ready()  # warm-up
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        predict(placed, x).block_until_ready()
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    return {
        "devices": jax.device_count(),
        "rows_per_device": batch // jax.device_count(),
        "first_call_s": first,
        "median_s": med,
        "times_s": times,
        "images_per_s": batch / med,
        "logits": np.asarray(logits).tolist(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(args.batch, args.runs)))
        return

    rows = []
    for n in args.devices:
        env = dict(os.environ, JAX_PLATFORMS="cpu")
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={n}".strip()
        cmd = [sys.executable, __file__, "--worker", "--batch", str(args.batch), "--runs", str(args.runs)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
        row = json.loads(next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))[7:])
        rows.append(row)
        print(
            f"{n} device(s): first call {row['first_call_s']:.2f}s, median {row['median_s'] * 1e3:.0f} ms, "
            f"{row['images_per_s']:.1f} img/s",
            flush=True,
        )
    import numpy as np

    ref = np.asarray(rows[0]["logits"])
    for row in rows:
        row["max_abs_logit_diff_vs_first"] = float(np.abs(np.asarray(row.pop("logits")) - ref).max())
        row["relative_time"] = row["median_s"] / rows[0]["median_s"]
    result = {
        "config": CONFIG,
        "tokens": (CONFIG["image_size"] // CONFIG["patch_size"]) ** 2 + 1,
        "batch": args.batch,
        "runs": args.runs,
        "host": {
            "cpus": os.cpu_count(),
            "load_avg_1m_at_end": os.getloadavg()[0],
            "python": platform.python_version(),
        },
        "note": "forced host devices share the same CPU cores: overhead/correctness, not speedup",
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
