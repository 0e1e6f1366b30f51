"""Export a model with and without token reduction; record artifact sizes and CPU latency.

For each schedule (the unreduced baseline and a reduced one) and batch size, writes the
``jax.export`` artifact (params baked in) with ``tofu_jax.export.write_export``, reloads it with
``jax.export.deserialize`` and times ``exp.call`` (median of ``--runs`` after warm-up), next to the
same model run in-process through Flax (``make_apply``) as a check that export costs nothing.
TFLite files (when TensorFlow is installed) are timed with the TFLite interpreter.

    python experiments/export_latency.py                       # bundled Fashion-MNIST ViT
    python experiments/export_latency.py --checkpoint ckpt.npz --model card.json --schedule s.json

Without ``--schedule`` the reduced model is the paper-style split (prune in the first half of the
blocks, MLERP-merge in the second) at ``--budget`` fewer FLOPs. Writes
``experiments/results/export_latency.json``. CPU timings depend on what else runs on the machine:
the load average before and after is recorded with them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from tofu_jax import planner
from tofu_jax.compare import device_description
from tofu_jax.export import ARTIFACT, load_exported, write_export
from tofu_jax.models.loading import load_model
from tofu_jax.models.vit import ViT, make_apply
from tofu_jax.schedule import Schedule

RESULTS = Path(__file__).resolve().parent / "results" / "export_latency.json"


def time_ms(fn, x, runs: int, warmup: int = 3) -> dict:
    for _ in range(warmup):
        jax.block_until_ready(fn(x))
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(x))
        times.append((time.perf_counter() - t0) * 1e3)
    q = np.percentile(times, [10, 90])
    return {"median_ms": statistics.median(times), "p10_ms": float(q[0]), "p90_ms": float(q[1])}


def time_tflite(path: Path, x: np.ndarray, runs: int) -> dict:
    import tensorflow as tf

    interp = tf.lite.Interpreter(model_path=str(path))
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]

    def call(batch):
        interp.set_tensor(inp["index"], batch)
        interp.invoke()
        return interp.get_tensor(out["index"])

    return time_ms(call, x, runs)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", help="checkpoint file (default: bundled)")
    p.add_argument("--model", help="config JSON or preset (default: bundled card)")
    p.add_argument("--format", default="auto")
    p.add_argument("--schedule", help="reduced schedule JSON (default: prune/MLERP split at --budget)")
    p.add_argument("--budget", type=float, default=0.4)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--tf", default="auto", choices=["auto", "off", "require"])
    p.add_argument("--work-dir", help="keep the artifacts here (default: a temporary directory)")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)

    try:
        config, params = load_model(args.checkpoint, args.model, fmt=args.format)
    except FileNotFoundError as e:
        print(f"export_latency: {e}", file=sys.stderr)
        return 2
    if args.schedule:
        reduced = Schedule.from_json(args.schedule)
        how = {"mode": "file", "path": args.schedule}
    else:
        half = config.depth // 2
        ops = ["prune"] * half + ["merge_mlerp"] * (config.depth - half)
        reduced = planner.allocate(config, ops, args.budget, prop_attn=True)
        how = {"mode": "split", "budget": args.budget}
    schedules = {"baseline": None, "reduced": reduced}

    tmp = None if args.work_dir else tempfile.TemporaryDirectory()
    work = Path(args.work_dir or tmp.name)
    apply = make_apply(ViT(config))
    load_before = os.getloadavg()
    rows = []
    for name, sched in schedules.items():
        for batch in args.batches:
            out_dir = work / f"{name}_b{batch}"
            t0 = time.perf_counter()
            side = write_export(out_dir, config, params, sched, batch, tf=args.tf)
            export_s = time.perf_counter() - t0
            exp = load_exported(out_dir / ARTIFACT)
            x = np.random.default_rng(batch).uniform(-1, 1, side["input"]["shape"]).astype(np.float32)
            call = jax.jit(exp.call)
            native = lambda xb, s=sched: apply(params, xb, s)
            diff = float(np.abs(np.asarray(call(x)) - np.asarray(native(x))).max())
            row = {
                "schedule": name,
                "describe": side["schedule_describe"],
                "gflops_per_image": side["gflops_per_image"],
                "batch": batch,
                "artifact_bytes": side["artifact_bytes"],
                "param_bytes": side["param_bytes"],
                "export_s": export_s,
                "max_abs_diff_vs_flax": diff,
                "exported": time_ms(call, x, args.runs),
                "flax_jit": time_ms(native, x, args.runs),
            }
            tf_info = side.get("tf", {})
            row["tf"] = tf_info
            if "tflite" in tf_info:
                try:
                    row["tflite"] = time_tflite(out_dir / tf_info["tflite"], x, args.runs)
                except Exception as e:  # untested path: report, do not lose the other rows
                    row["tflite"] = {"error": f"{type(e).__name__}: {e}"}
            rows.append(row)
            print(
                f"{name:>8} b{batch:<3} {side['artifact_bytes'] / 1e6:7.2f} MB  "
                f"exported {row['exported']['median_ms']:8.2f} ms  "
                f"flax {row['flax_jit']['median_ms']:8.2f} ms  "
                f"|diff| {diff:.1e}",
                flush=True,
            )
    result = {
        "device": device_description(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "jax_version": jax.__version__,
        "load_average_before_after": [load_before[0], os.getloadavg()[0]],
        "runs": args.runs,
        "checkpoint": args.checkpoint or "bundled",
        "model": args.model or "bundled",
        "config": config.to_dict(),
        "reduced_schedule": reduced.to_dict(),
        "reduced_from": how,
        "rows": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
