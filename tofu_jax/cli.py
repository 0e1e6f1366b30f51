"""The ``tofu-jax`` command (also ``python -m tofu_jax``): thin flag parsing over the modules.

tofu-jax                      # = tofu-jax run: bundled model, ToFu vs ToMe vs baseline
tofu-jax run --budget 0.5 --num-examples 0
tofu-jax profile --out profile.json
tofu-jax plan --profile profile.json --budget 0.4 --out schedule.json
tofu-jax export --schedule schedule.json --batch 8 --out export/
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from tofu_jax.errors import UserError
from tofu_jax.export import PLATFORMS
from tofu_jax.profiler import PROFILE_METRICS


class _Parser(argparse.ArgumentParser):
    """Reports a bad flag as a :class:`UserError`, so it prints as one line like every other."""

    def error(self, message: str):
        raise UserError(f"{message} (see `{self.prog} --help`)")


def _int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
        return value

    return parse


def _float_in(low: float, high: float, *, low_open: bool = False, high_open: bool = False):
    lo, hi = ("(" if low_open else "["), (")" if high_open else "]")
    interval = f"{lo}{low:g}, {high:g}{hi}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number in {interval}, got {text!r}") from None
        too_low = value <= low if low_open else value < low
        too_high = value >= high if high_open else value > high
        if not np.isfinite(value) or too_low or too_high:
            raise argparse.ArgumentTypeError(f"expected a number in {interval}, got {text}")
        return value

    return parse


def _platforms(text: str) -> list[str]:
    names = [p.strip() for p in text.split(",") if p.strip()]
    bad = [p for p in names if p not in PLATFORMS]
    if not names or bad:
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated list of {', '.join(PLATFORMS)}, got {text!r}"
        )
    return names


POSITIVE = _int_at_least(1)
NON_NEGATIVE = _int_at_least(0)


# --- shared option groups ---------------------------------------------------------------------------
def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument(
        "--checkpoint", help="Google/big_vision .npz, timm or HF .safetensors/.pth/.bin (default: bundled)"
    )
    g.add_argument(
        "--model",
        help="auto (default with --checkpoint: the architecture read from the checkpoint), a timm model "
        "name (auto plus its numerics and input recipe), a JSON card/config file or a preset like B/16 "
        "(default without --checkpoint: the bundled model)",
    )
    g.add_argument(
        "--format", default="auto", choices=["auto", "google", "timm", "hf"], help="checkpoint layout"
    )
    g.add_argument(
        "--image-size", type=POSITIVE, help="override the config's image size (position embedding resampled)"
    )
    g.add_argument("--num-classes", type=POSITIVE, help="override the class count (needs --reset-head)")
    g.add_argument(
        "--reset-head", action="store_true", help="re-initialise the head when class counts differ"
    )
    g.add_argument("--dtype", choices=["float32", "bfloat16"], help="compute dtype")
    g.add_argument(
        "--input-norm", choices=["inception", "imagenet", "clip"],
        help="pixel normalisation the model expects: inception = [-1, 1], imagenet/clip = their mean/std "
        "(default: from the card or the checkpoint's family; bare timm weights of an unknown family "
        "need it)",
    )  # fmt: skip
    g.add_argument(
        "--gelu", choices=["tanh", "exact"],
        help="override the GELU form (default: from the checkpoint's format: Google tanh, timm/HF exact)",
    )  # fmt: skip
    g.add_argument(
        "--layernorm-eps", type=_float_in(0.0, 1.0, low_open=True, high_open=True),
        help="override the LayerNorm epsilon (default: from the checkpoint's format or config.json)",
    )  # fmt: skip
    g.add_argument(
        "--num-heads", type=POSITIVE,
        help="attention heads, where the checkpoint cannot tell (a timm checkpoint of a non-standard width)",
    )  # fmt: skip
    g.add_argument(
        "--crop-pct", type=_float_in(0.0, 1.0, low_open=True),
        help="override the evaluation crop: resize to image_size / crop_pct, then crop the centre "
        "(default: the checkpoint family's recipe)",
    )  # fmt: skip
    g.add_argument(
        "--resize", choices=["shorter", "square"],
        help="override what is resized: the shorter side (timm) or both sides (HF, big_vision)",
    )  # fmt: skip
    g.add_argument("--interpolation", choices=["bilinear", "bicubic"], help="override the resampling filter")


def add_runtime_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--compile-cache", metavar="DIR|off",
        help="persistent XLA compile cache, or off (default: $TOFU_JAX_COMPILE_CACHE, "
        "$JAX_COMPILATION_CACHE_DIR, else $XDG_CACHE_HOME or ~/.cache, under tofu_jax/xla)",
    )  # fmt: skip


def add_data_args(p: argparse.ArgumentParser) -> None:
    add_runtime_args(p)
    g = p.add_argument_group("data")
    g.add_argument(
        "--dataset", default="fashion_mnist_idx",
        help="fashion_mnist_idx (offline IDX files), imagefolder (DATA_DIR/SPLIT/CLASS/*.jpg|png) or a "
        "TFDS name such as imagenet2012",
    )  # fmt: skip
    g.add_argument("--data-dir", help="IDX directory, image-folder root or TFDS data_dir")
    g.add_argument(
        "--split",
        help="evaluation split, TFDS syntax allowed (validation, test[:10%%]) (default: test, or "
        "validation/val where the dataset has no test split)",
    )
    g.add_argument(
        "--calib-split", default="train",
        help="split for calibration and the planner's held-out images (default: train)",
    )  # fmt: skip
    g.add_argument("--batch-size", type=POSITIVE, default=64, help="evaluation batch (default 64)")
    g.add_argument("--calib-images", type=POSITIVE, default=256, help="training-split images for profiling")
    g.add_argument("--seed", type=NON_NEGATIVE, default=0)


def model_from_args(args):
    """``(config, params)`` for the model flags of :func:`add_model_args` (:func:`tofu_jax.load_model`)."""
    from tofu_jax.models.loading import load_model

    return load_model(
        args.checkpoint,
        args.model,
        fmt=args.format,
        reset_head=args.reset_head,
        image_size=args.image_size,
        num_classes=args.num_classes,
        dtype=args.dtype,
        gelu_approximate=None if args.gelu is None else args.gelu == "tanh",
        layernorm_eps=args.layernorm_eps,
        input_norm=args.input_norm,
        num_heads=args.num_heads,
        crop_pct=args.crop_pct,
        resize=args.resize,
        interpolation=args.interpolation,
    )


def _eval_set(args, config):
    from tofu_jax.data import open_eval_set

    return open_eval_set(
        args.dataset, args.split, config, limit=args.num_examples, data_dir=args.data_dir, seed=args.seed,
        calib_split=args.calib_split,
    )  # fmt: skip


def _calibration_images(args, config):
    from tofu_jax import pipeline

    return pipeline.calibration_images(
        args.dataset, config, split=args.calib_split, count=args.calib_images, seed=args.seed,
        data_dir=args.data_dir,
    )  # fmt: skip


def _plan_options(args) -> dict:
    return dict(mode=args.planner, plan_images=args.plan_images, metric=args.metric, selection=args.selection,
                r_profile=args.r_profile, seed=args.seed)  # fmt: skip


def _log(text: str) -> None:
    print(text, flush=True)


def _schedule_from_args(args, config, params):
    """``--schedule`` (validated against the model), else a fresh plan for ``--budget``."""
    from tofu_jax import pipeline

    if args.schedule:
        return pipeline.load_schedule(args.schedule, config)
    images = _calibration_images(args, config)
    return pipeline.plan(config, params, args.budget, images, log=_log, **_plan_options(args)).schedule


class _Progress:
    """A tqdm bar on stderr, opened at the first update (so an early error prints alone)."""

    def __init__(self, total: int, desc: str):
        self.total, self.desc, self.bar = total, desc, None

    def __call__(self, name: str, n: int) -> None:
        if self.bar is None:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.total, desc=self.desc, unit="img", leave=False, file=sys.stderr)
        self.bar.set_description(name)
        self.bar.update(n)

    def close(self):
        if self.bar is not None:
            self.bar.close()


# --- commands ---------------------------------------------------------------------------------------
def cmd_run(args) -> int:
    from tofu_jax import pipeline, planner
    from tofu_jax.data import eval_split_name

    t0 = time.time()
    planner.check_budget(args.budget)
    config, params = model_from_args(args)
    test_x, test_y = _eval_set(args, config)
    calib = None if args.schedule else _calibration_images(args, config)
    bar = _Progress(len(test_x) * 3, "evaluating")
    pipeline.run(
        config, params, test_x, test_y, calib, budget=args.budget, schedule=args.schedule,
        out_dir=args.out_dir, split_name=eval_split_name(args.dataset, args.split, args.data_dir),
        plan_options=_plan_options(args), batch_size=args.batch_size, bench_batch=args.bench_batch,
        bench_runs=args.bench_runs, progress=bar, log=_log,
    )  # fmt: skip
    bar.close()
    out = Path(args.out_dir)
    print(f"wrote {out / 'results.json'} and {out / 'comparison.png'} ({time.time() - t0:.0f}s)")
    return 0


def cmd_profile(args) -> int:
    from tofu_jax import pipeline, planner
    from tofu_jax.viz import plot_profile

    config, params = model_from_args(args)
    images = _calibration_images(args, config)
    profile = pipeline.profile_linearity(
        config, params, images, r_profile=args.r_profile, seed=args.seed, log=_log
    )
    profile.save(args.out)
    tau = planner.otsu_threshold(profile.metric(args.metric))
    pipeline.draw(plot_profile, profile, Path(args.out).with_suffix(".png"), tau, log=_log)
    print(f"{'block':>5}{'L_mlp(m)':>10}{'L_mlp(r)':>10}{'L_blk(m)':>10}{'cos(m)':>8}{'|avg|/|x|':>10}")
    for b in profile.blocks:
        print(f"{b.block:>5}{b.L_mlp_matched:>10.4f}{b.L_mlp_random:>10.4f}{b.L_block_matched:>10.4f}"
              f"{b.cos_matched:>8.3f}{b.avg_norm_ratio:>10.3f}")  # fmt: skip
    print(f"wrote {args.out} and {Path(args.out).with_suffix('.png')}")
    return 0


def cmd_plan(args) -> int:
    from tofu_jax import pipeline
    from tofu_jax.profiler import Profile

    config, params = model_from_args(args)
    images = _calibration_images(args, config)
    profile = Profile.load(args.profile) if args.profile else None
    p = pipeline.plan(config, params, args.budget, images, profile=profile, log=_log, **_plan_options(args))
    meta = p.meta(config)
    p.schedule.to_json(args.out, meta=meta)
    print(p.schedule.describe())
    print(f"{meta['gflops']:.4f} GFLOPs ({1 - meta['flops_ratio']:.1%} fewer); wrote {args.out}")
    return 0


def cmd_export(args) -> int:
    from tofu_jax import pipeline
    from tofu_jax.export import write_export

    config, params = model_from_args(args)
    schedule = pipeline.load_schedule(args.schedule, config) if args.schedule else None
    meta = {"checkpoint": args.checkpoint, "model": args.model, "schedule": args.schedule}
    side = write_export(
        args.out, config, params, schedule, args.batch, platforms=args.platforms, tf=args.tf, meta=meta
    )
    print(
        f"{side['schedule_describe']}: {side['gflops_per_image']:.4f} GFLOPs/image, tokens {side['tokens']}"
    )
    print(
        f"wrote {Path(args.out) / side['artifact']} ({side['artifact_bytes'] / 1e6:.2f} MB, params baked in)"
    )
    for key, value in side.get("tf", {}).items():
        print(f"tf {key}: {value}")
    return 0


def cmd_finetune(args) -> int:
    import jax

    from tofu_jax import planner
    from tofu_jax.checkpoints import google
    from tofu_jax.compare import compare, format_table
    from tofu_jax.data import load_split
    from tofu_jax.finetune import FinetuneConfig, finetune

    planner.check_budget(args.budget)
    ft = FinetuneConfig(
        steps=args.steps, batch_size=args.train_batch, learning_rate=args.lr, seed=args.seed,
        warmup_steps=max(1, args.steps // 10), ckpt_every=args.ckpt_every, augment_pad=args.crop_pad,
    )  # fmt: skip
    config, params = model_from_args(args)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sched = _schedule_from_args(args, config, params)
    sched.to_json(out_dir / "schedule.json")
    train_x, train_y = load_split(
        args.dataset, args.calib_split, config, limit=args.train_images, data_dir=args.data_dir,
        seed=args.seed, calib_split=args.calib_split,
    )  # fmt: skip
    test_x, test_y = _eval_set(args, config)
    zero_shot = params
    from tqdm.auto import tqdm

    bar = tqdm(total=ft.steps, desc="fine-tuning", unit="step", file=sys.stderr, leave=False)
    params, log = finetune(
        config, params, sched, train_x, train_y, ft, workdir=out_dir,
        progress=lambda s, m: (bar.update(s - bar.n), bar.set_postfix(loss=f"{m['loss']:.3f}")),
    )  # fmt: skip
    bar.close()
    google.save_npz(out_dir / "finetuned.npz", jax.device_get(params))
    rows = []
    for name, p in (("zero_shot", zero_shot), ("finetuned", params)):
        res = compare(config, p, {name: sched}, test_x, test_y, batch_size=args.batch_size, bench_runs=1)
        rows.extend(res)
    print(format_table(rows))
    result = {
        "schedule": sched.to_dict(), "steps": ft.steps, "crop_pad": ft.augment_pad,
        "rows": rows, "train_log": log,
    }  # fmt: skip
    (out_dir / "finetune.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out_dir / 'finetuned.npz'} and {out_dir / 'finetune.json'}")
    return 0


def cmd_visualize(args) -> int:
    import jax.numpy as jnp

    from tofu_jax import pipeline, planner
    from tofu_jax.data import read_image, read_image_file
    from tofu_jax.models.vit import ViT
    from tofu_jax.viz import plot_schedule, plot_token_groups, token_groups

    planner.check_budget(args.budget)
    config, params = model_from_args(args)
    if args.image:  # any size: the model's own resize, crop and normalisation
        image = read_image_file(args.image, config)
    else:
        image = read_image(args.dataset, args.split, config, args.index, data_dir=args.data_dir)
    sched = _schedule_from_args(args, config, params)
    logits, state = ViT(config).apply(
        {"params": params}, jnp.asarray(image[None]), sched, track_sources=True, mutable=["intermediates"]
    )
    sources = np.asarray(state["intermediates"]["sources"][0][0])
    groups = token_groups(sources, config.num_prefix, config.grid)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    title = f"{sched.describe()} | predicted class {int(np.argmax(logits[0]))}"
    counts = sched.token_counts(config.num_tokens, config.num_prefix)
    pipeline.draw(plot_token_groups, image, groups, out, title, log=_log)
    pipeline.draw(plot_schedule, sched, counts, out.with_name(out.stem + "_schedule.png"), log=_log)
    print(f"wrote {out} and {out.with_name(out.stem + '_schedule.png')}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tofu-jax", description="Token Fusion for ViTs in JAX/Flax")
    parser.add_argument("--debug", action="store_true", help="show the traceback of user errors too")
    sub = parser.add_subparsers(dest="command")

    def planning(p):
        p.add_argument(
            "--budget", type=_float_in(0.0, 1.0, high_open=True), default=0.4,
            help="fraction of FLOPs to remove (default 0.4)",
        )  # fmt: skip
        p.add_argument(
            "--planner",
            default="fidelity",
            choices=["fidelity", "per_block", "split"],
            help="fidelity: op and r per block by KL to the unreduced model on calibration images "
            "(default); per_block/split: from the linearity profile alone",
        )
        p.add_argument(
            "--metric",
            default="L_mlp_matched",
            choices=PROFILE_METRICS,
            help="profile column the planner thresholds",
        )
        p.add_argument(
            "--selection",
            default="redundancy",
            choices=["redundancy", "importance"],
            help="which tokens go: most redundant (bipartite matching) or least important (CLS attention)",
        )
        p.add_argument(
            "--plan-images",
            type=POSITIVE,
            default=128,
            help="calibration images the fidelity planner scores schedules on (the first of --calib-images)",
        )
        p.add_argument("--r-profile", type=POSITIVE, help="matched pairs per image per block while profiling")

    run = sub.add_parser("run", help="main job: baseline vs ToFu vs ToMe at one FLOPs budget")
    add_model_args(run)
    add_data_args(run)
    planning(run)
    run.add_argument(
        "--schedule",
        help="use this schedule, not a plan: a JSON file or the compact form prune:4x5,merge_mlerp:5x7",
    )
    run.add_argument("--num-examples", type=NON_NEGATIVE, default=2000, help="test images (0 = full split)")
    run.add_argument(
        "--bench-batch", type=POSITIVE, help="timing batch (default: --batch-size, which reuses its programs)"
    )
    run.add_argument("--bench-runs", type=POSITIVE, default=5)
    run.add_argument("--out-dir", default="runs/main")
    run.set_defaults(func=cmd_run)

    prof = sub.add_parser("profile", help="per-block linearity profile on calibration images")
    add_model_args(prof)
    add_data_args(prof)
    prof.add_argument("--r-profile", type=POSITIVE)
    prof.add_argument("--metric", default="L_mlp_matched", choices=PROFILE_METRICS)
    prof.add_argument("--out", default="profile.json")
    prof.set_defaults(func=cmd_profile)

    pl = sub.add_parser("plan", help="profile + budget -> schedule JSON")
    add_model_args(pl)
    add_data_args(pl)
    planning(pl)
    pl.add_argument("--profile", help="profile JSON from `tofu-jax profile` (else profile now)")
    pl.add_argument("--out", default="schedule.json")
    pl.set_defaults(func=cmd_plan)

    ex = sub.add_parser("export", help="serialized jax.export (StableHLO) artifact + JSON sidecar")
    add_model_args(ex)
    ex.add_argument(
        "--schedule", help="schedule JSON file or compact form (prune:4x5,...) (default: no reduction)"
    )
    ex.add_argument("--batch", type=POSITIVE, default=8, help="fixed batch size of the artifact")
    ex.add_argument("--platforms", type=_platforms, default="cpu", help="comma-separated, e.g. cpu,cuda")
    ex.add_argument("--tf", default="auto", choices=["auto", "off", "require"], help="TF SavedModel/TFLite")
    ex.add_argument("--out", default="export", help="output directory")
    add_runtime_args(ex)
    ex.set_defaults(func=cmd_export)
    vis = sub.add_parser("visualize", help="draw which patches each final token absorbed")
    add_model_args(vis)
    add_data_args(vis)
    planning(vis)
    vis.add_argument("image", nargs="?", help="PNG/JPEG of any size (else --index of the evaluation split)")
    vis.add_argument(
        "--index", type=NON_NEGATIVE, default=0, help="evaluation-split image to draw when no IMAGE is given"
    )
    vis.add_argument(
        "--schedule", help="schedule JSON file or compact form (prune:4x5,...) (else planned from --budget)"
    )
    vis.add_argument("--out", default="runs/visualize/tokens.png")
    vis.set_defaults(func=cmd_visualize)

    ft = sub.add_parser("finetune", help="train with a schedule active, then evaluate")
    add_model_args(ft)
    add_data_args(ft)
    planning(ft)
    ft.add_argument(
        "--schedule", help="schedule JSON file or compact form (prune:4x5,...) (else planned from --budget)"
    )
    ft.add_argument("--steps", type=POSITIVE, default=100)
    ft.add_argument("--lr", type=_float_in(0.0, 1.0, low_open=True), default=1e-4)
    ft.add_argument("--train-batch", type=POSITIVE, default=64)
    ft.add_argument(
        "--crop-pad", type=NON_NEGATIVE, default=2,
        help="random-crop padding in pixels (0: horizontal flips only, as the bundled model's last steps)",
    )  # fmt: skip
    ft.add_argument(
        "--train-images", type=NON_NEGATIVE, default=0, help="training images to sample from (0 = all)"
    )
    ft.add_argument("--num-examples", type=NON_NEGATIVE, default=2000, help="test images (0 = full split)")
    ft.add_argument("--ckpt-every", type=POSITIVE, default=50)
    ft.add_argument("--out-dir", default="runs/finetune", help="checkpoints go here; re-run to resume")
    ft.set_defaults(func=cmd_finetune)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; user errors print one ``tofu-jax: error:`` line and return 2 (``--debug``: raise)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    parser = build_parser()
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["run", *argv]
    try:
        args, unknown = parser.parse_known_args(argv)
        if unknown:
            where = f"tofu-jax {args.command}" if args.command else "tofu-jax"
            raise UserError(f"unrecognized arguments: {' '.join(unknown)} (see `{where} --help`)")
        if args.command is None:
            parser.print_help()
            return 0
        from tofu_jax import compile_cache

        compile_cache.enable(getattr(args, "compile_cache", None))
        return args.func(args)
    except (UserError, OSError) as e:
        if debug:
            raise
        msg = str(e).split("\n--------------------\n")[0]
        print(f"tofu-jax: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
