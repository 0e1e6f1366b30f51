"""Shared set-up of the experiment scripts: model + data loading from the same flags as the CLI."""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import jax

from tofu_jax import cli, compile_cache, data, pipeline

RESULTS = Path(__file__).resolve().parent / "results"


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    cli.add_model_args(p)
    cli.add_data_args(p)
    p.add_argument("--num-examples", type=int, default=2000, help="test images (0 = full split)")
    p.add_argument("--bench-batch", type=int, default=64)
    p.add_argument("--bench-runs", type=int, default=3)
    p.add_argument("--out", help="output stem (default experiments/results/<script>)")
    return p


def setup(args):
    """``(config, params, test_x, test_y, calib_x)``; turns on the persistent compile cache first."""
    compile_cache.enable(args.compile_cache)
    config, params = cli.model_from_args(args)
    kw = {"data_dir": args.data_dir, "seed": args.seed, "calib_split": args.calib_split}
    test_x, test_y = data.load_split(args.dataset, "test", config, limit=args.num_examples, **kw)
    return config, params, test_x, test_y, calibration(args, config)


def calibration(args, config):
    """The ``--calib-images`` draw of ``--calib-split`` that ``tofu-jax run`` profiles and plans on."""
    return pipeline.calibration_images(
        args.dataset, config, split=args.calib_split, count=args.calib_images, seed=args.seed,
        data_dir=args.data_dir,
    )  # fmt: skip


def environment() -> dict:
    return {
        "device": jax.devices()[0].device_kind,
        "platform": jax.devices()[0].platform,
        "devices": jax.device_count(),
        "jax": jax.__version__,
        "machine": platform.machine(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1) + "\n")
