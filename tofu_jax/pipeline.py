"""The main job as library functions: calibration images, profile, plan, compare, result files.

``tofu-jax run`` is, in Python (every step is also usable alone)::

    from tofu_jax import data, load_model, pipeline

    config, params = load_model()  # the bundled model and its card
    test_x, test_y = data.open_eval_set("fashion_mnist_idx", None, config, limit=2000)
    calib = pipeline.calibration_images("fashion_mnist_idx", config)
    result = pipeline.run(config, params, test_x, test_y, calib, budget=0.4, out_dir="runs/main")

``log`` arguments take a ``print``-like callable for progress lines (default: silent).
"""

from __future__ import annotations

import importlib.util
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tofu_jax import data, planner
from tofu_jax.compare import compare, device_description, format_table
from tofu_jax.models.vit import ViTConfig
from tofu_jax.profiler import Profile, profile_model
from tofu_jax.schedule import Schedule

Log = Callable[[str], None] | None


def _say(log: Log, text: str) -> None:
    if log is not None:
        log(text)


def calibration_images(
    dataset: str,
    config: ViTConfig,
    *,
    split: str = "train",
    count: int = 256,
    seed: int = 0,
    data_dir: str | Path | None = None,
) -> np.ndarray:
    """``count`` seeded images of ``split`` preprocessed for the model, ``float32 [count, S, S, C]``.

    Labels are not read (calibration is label-free); the draw is the one the CLI makes for
    ``--calib-split split --calib-images count --seed seed``.
    """
    kw = dict(data_dir=data_dir, limit=count, seed=seed, calib_split=split, labelled=False)
    return data.load_split(dataset, split, config, **kw)[0]


def profile_linearity(
    config: ViTConfig, params, images, *, r_profile: int | None = None, seed: int = 0, log: Log = None
) -> Profile:
    """The per-block linearity :class:`~tofu_jax.profiler.Profile` on calibration ``images``."""
    _say(log, f"profiling linearity on {len(images)} calibration images")
    return profile_model(config, params, images, r_profile=r_profile, seed=seed)


def plan(
    config: ViTConfig,
    params,
    budget: float,
    images,
    *,
    profile: Profile | None = None,
    mode: str = "fidelity",
    plan_images: int = 128,
    metric: str = "L_mlp_matched",
    selection: str = "redundancy",
    r_profile: int | None = None,
    seed: int = 0,
    log: Log = None,
) -> planner.Plan:
    """A ToFu :class:`~tofu_jax.planner.Plan` removing ``budget`` of the FLOPs.

    ``images``: calibration images (the fidelity planner scores schedules on the first
    ``plan_images``); ``profile``: a linearity profile of them, made here when None.
    """
    planner.check_budget(budget)
    if profile is None:
        profile = profile_linearity(config, params, images, r_profile=r_profile, seed=seed, log=log)
    profile.check_depth(config.depth)
    if mode == "fidelity":
        _say(log, f"planning: fidelity to the unreduced model on {min(len(images), plan_images)} images")
    return planner.plan(
        profile, config, budget, mode=mode, metric=metric, selection=selection, params=params,
        images=images[:plan_images], progress=(lambda text: log(f"  {text}")) if log else None,
    )  # fmt: skip


def load_schedule(spec: str | Path, config: ViTConfig) -> Schedule:
    """A schedule JSON file or compact form (``prune:4x5,merge_mlerp:5x7``), validated for the model."""
    schedule = Schedule.load(spec)
    schedule.validate(config.depth, config.num_tokens, config.num_prefix)
    return schedule


def draw(plot: Callable, *args, log: Log = None) -> bool:
    """Call a :mod:`tofu_jax.viz` function when matplotlib is installed; else say why not."""
    if importlib.util.find_spec("matplotlib") is None:
        _say(log, "no plot drawn: pip install 'tofu_jax[plots]' for the PNG files")
        return False
    plot(*args)
    return True


def run(
    config: ViTConfig,
    params,
    test_images,
    test_labels: np.ndarray | None,
    calib_images,
    *,
    budget: float = 0.4,
    schedule: Schedule | str | Path | None = None,
    out_dir: str | Path = "runs/main",
    split_name: str = "test",
    plan_options: dict | None = None,
    batch_size: int = 64,
    bench_batch: int | None = None,
    bench_runs: int = 5,
    progress: Callable[[str, int], None] | None = None,
    log: Log = None,
) -> dict:
    """The main job: the unreduced model vs ToFu vs ToMe at one FLOPs budget, on the same images.

    ToFu is ``schedule`` (a :class:`Schedule`, or a file or compact form for :func:`load_schedule`)
    or a plan for ``budget`` from ``calib_images`` (:func:`plan` with ``plan_options``); ToMe is
    constant-``r`` ``merge_avg`` with proportional attention at the same
    budget. ``test_images``/``test_labels`` are arrays, or a
    :class:`~tofu_jax.data.StreamedImages` with ``None`` (:func:`tofu_jax.data.open_eval_set`).
    Writes ``profile.json`` (when planning), ``tofu_schedule.json``, ``results.json`` and
    ``comparison.png`` under ``out_dir``; returns what ``results.json`` holds.
    """
    t0 = time.time()
    planner.check_budget(budget)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _say(
        log,
        f"model: ViT depth {config.depth} width {config.width}, {config.num_tokens} tokens; "
        f"{len(test_images)} {split_name} images; budget {budget:.0%} fewer FLOPs",
    )
    if isinstance(schedule, Schedule):
        schedule.validate(config.depth, config.num_tokens, config.num_prefix)
        tofu, plan_meta = schedule, {"mode": "given"}
    elif schedule is not None:
        tofu, plan_meta = load_schedule(schedule, config), {"mode": "file", "path": str(schedule)}
    else:
        options = dict(plan_options or {})
        prof = profile_linearity(config, params, calib_images, r_profile=options.pop("r_profile", None),
                                 seed=options.get("seed", 0), log=log)  # fmt: skip
        prof.save(out / "profile.json")
        p = plan(config, params, budget, calib_images, profile=prof, log=log, **options)
        tofu, plan_meta = p.schedule, p.meta(config)
    tofu.to_json(out / "tofu_schedule.json", meta=plan_meta)
    tome = planner.allocate(config, ["merge_avg"] * config.depth, budget, prop_attn=True)
    schedules = {"baseline": None, "tofu": tofu, "tome": tome}
    rows = compare(
        config, params, schedules, test_images, test_labels,
        batch_size=batch_size, bench_batch=bench_batch, bench_runs=bench_runs, progress=progress,
    )  # fmt: skip
    _say(log, format_table(rows))
    result = {
        "device": device_description(),
        "budget": budget,
        "num_examples": len(test_images),
        "planner": plan_meta,
        "config": config.to_dict(),  # the model card: architecture and input recipe as used
        "rows": rows,
        "wall_s": time.time() - t0,
    }
    (out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    from tofu_jax.viz import plot_comparison

    title = f"{len(test_images)} {split_name} images, budget {budget:.0%}"
    draw(plot_comparison, rows, out / "comparison.png", title, log=log)
    return result
