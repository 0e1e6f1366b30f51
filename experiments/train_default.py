"""Train the bundled Fashion-MNIST ViT (tofu_jax/assets/fmnist_vit.npz) on the CPU.

Shaped like ViT-B/16 at small width: 28x28 images, patch 2 -> 196 patch tokens + CLS, depth 12,
width 96, 3 heads, MLP 384. Full-resolution training costs ~1 h per epoch on 2 CPU cores, so training
is progressive (FixRes-style): phase "low" trains at 14x14 (49 patches, ~8x cheaper), phase "high"
resamples the position embedding to 14x14 patches and fine-tunes at 28x28. Each phase checkpoints
to ``--workdir`` every ``--ckpt-every`` steps and resumes from there when re-run.

    python experiments/train_default.py --workdir /tmp/fmnist_train

Writes ``tofu_jax/assets/fmnist_vit.npz`` (Google npz layout) and ``fmnist_vit.json`` (card).
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from tofu_jax import train
from tofu_jax.checkpoints import google
from tofu_jax.checkpoints.common import flatten
from tofu_jax.checkpoints.load import adapt
from tofu_jax.data import idx
from tofu_jax.data.batching import batches
from tofu_jax.data.transforms import augment, resize_nearest_area, to_model_range
from tofu_jax.evaluate import accuracy
from tofu_jax.models.vit import ViT, ViTConfig, init_params
from tofu_jax.train import OptimConfig, load_train_state, save_train_state

ASSETS = Path(__file__).resolve().parents[1] / "tofu_jax" / "assets"
BASE = ViTConfig(
    image_size=28, patch_size=2, channels=1, num_classes=10,
    width=96, depth=12, mlp_dim=384, num_heads=3, input_norm="inception",
)  # fmt: skip


def run_phase(name, config, params, images, labels, optim, args, log, log_file):
    model = ViT(config)
    tx = train.make_optimizer(optim)
    opt_state = train.init_opt_state(tx, params)
    step_fn = train.make_train_step(model, tx, label_smoothing=optim.label_smoothing)
    state_path = Path(args.workdir) / f"state_{name}"
    step = 0
    if state_path.exists():
        params, opt_state, step, _ = load_train_state(state_path, params, opt_state)
        print(f"[{name}] resumed at step {step}", flush=True)
    phase_id = phase_index(name)
    rng = np.random.default_rng(args.seed + 1000 * phase_id)
    key = jax.random.PRNGKey(args.seed)
    steps_per_epoch = len(images) // args.batch_size
    pad = args.crop_pad if args.crop_pad >= 0 else (1 if config.image_size == 14 else 2)
    t0, first_step = time.time(), step
    while step < optim.total_steps:
        epoch = step // steps_per_epoch
        ep_rng = np.random.default_rng(args.seed + 7919 * epoch + phase_id)
        epoch_batches = batches(images, labels, args.batch_size, rng=ep_rng, drop_remainder=True)
        for xb, yb, _ in itertools.islice(epoch_batches, step % steps_per_epoch, None):  # resume mid-epoch
            if step >= optim.total_steps:
                break
            x = augment(xb, rng, pad=pad)
            params, opt_state, metrics = step_fn(
                params, opt_state, jnp.asarray(x), jnp.asarray(yb), jax.random.fold_in(key, step)
            )
            step += 1
            if step % 50 == 0 or step == optim.total_steps:
                m = {k: float(v) for k, v in metrics.items()}
                rate = (time.time() - t0) / max(step - first_step, 1)
                print(
                    f"[{name}] step {step}/{optim.total_steps} loss {m['loss']:.4f} "
                    f"acc {m['accuracy']:.3f} ({time.time() - t0:.0f}s)",
                    flush=True,
                )
                log.writerow([name, step, m["loss"], m["accuracy"], m["grad_norm"], f"{rate:.3f}"])
                log_file.flush()
            if step % args.ckpt_every == 0:
                save_train_state(state_path, params, opt_state, step, {"phase": name})
    save_train_state(state_path, params, opt_state, step, {"phase": name})
    return params


def phase_index(name: str) -> int:
    """'low' -> 0, 'high' -> 1, 'extra' -> 2, 'extra2' -> 3, ... (seeds the data order)."""
    fixed = {"low": 0, "high": 1, "extra": 2}
    if name in fixed:
        return fixed[name]
    return 1 + int(name.removeprefix("extra"))


def extra_phase_names(count: int) -> list:
    return ["extra" if i == 0 else f"extra{i + 1}" for i in range(count)]


def int_list(text: str) -> list:
    return [int(v) for v in text.split(",") if v.strip()]


def float_list(text: str) -> list:
    return [float(v) for v in text.split(",") if v.strip()]


def augmentation_text(crop_pad: int) -> str:
    if crop_pad < 0:
        return "random crop (pad 1 px at 14x14, 2 px at 28x28) + horizontal flip"
    return f"random crop (pad {crop_pad} px) + horizontal flip" if crop_pad else "horizontal flip"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="/tmp/tofu_jax_train_default")
    p.add_argument("--data-dir", default=None, help="directory with Fashion-MNIST IDX files")
    p.add_argument("--low-epochs", type=float, default=5.0)
    p.add_argument("--high-steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--high-lr", type=float, default=2e-4)
    p.add_argument(
        "--extra-steps", type=int_list, default=[],
        help="optional warm-restart phases at 28x28, comma-separated lengths (e.g. 800,1000): each is "
        "a fresh warmup-cosine schedule starting from the previous phase's weights",
    )  # fmt: skip
    p.add_argument(
        "--extra-lr", type=float_list, default=[3e-4],
        help="peak learning rate per extra phase, comma-separated; the last value repeats",
    )  # fmt: skip
    p.add_argument("--ckpt-every", type=int, default=100)
    p.add_argument(
        "--crop-pad", type=int, default=-1,
        help="random-crop padding in pixels (0: flip only; -1: 1 px at 14x14, 2 px at 28x28)",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ASSETS / "fmnist_vit.npz"))
    args = p.parse_args(argv)
    if not args.extra_lr:
        p.error("--extra-lr needs at least one learning rate")
    # One peak lr per extra phase; the last given value repeats for the remaining phases.
    extra_lrs = [args.extra_lr[min(i, len(args.extra_lr) - 1)] for i in range(len(args.extra_steps))]
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    t_start = time.time()

    train_x, train_y = idx.load_split("train", args.data_dir)
    test_x, test_y = idx.load_split("test", args.data_dir)
    train_f = to_model_range(train_x)
    log_path = Path(args.workdir) / "train_log.csv"
    with open(log_path, "a", newline="") as fh:
        log = csv.writer(fh)
        low_cfg = BASE.replace(image_size=14)
        steps_per_epoch = len(train_f) // args.batch_size
        low_steps = int(args.low_epochs * steps_per_epoch)
        params = init_params(low_cfg, args.seed)
        low_opt = OptimConfig(learning_rate=args.lr, warmup_steps=300, total_steps=low_steps)
        params = run_phase(
            "low", low_cfg, params, resize_nearest_area(train_f, 14), train_y, low_opt, args, log, fh
        )
        fh.flush()

        high_params = adapt(flatten(jax.device_get(params)), BASE, source="low-res phase")
        high_opt = OptimConfig(
            learning_rate=args.high_lr, warmup_steps=20, total_steps=args.high_steps, weight_decay=0.05
        )
        params = run_phase("high", BASE, high_params, train_f, train_y, high_opt, args, log, fh)
        # Warm restarts: the high-res model is under-fitted, and each new cosine lets a later
        # session add epochs without rewriting a finished phase's schedule.
        for name, steps, lr in zip(
            extra_phase_names(len(extra_lrs)), args.extra_steps, extra_lrs, strict=True
        ):
            extra_opt = OptimConfig(learning_rate=lr, warmup_steps=50, total_steps=steps, weight_decay=0.05)
            params = run_phase(name, BASE, params, train_f, train_y, extra_opt, args, log, fh)

    save_model(
        Path(args.out), params, BASE, test_x, test_y, "fmnist_vit",
        "ViT (patch 2, depth 12, width 96) trained on Fashion-MNIST by experiments/train_default.py; "
        "CLS token at index 0, Google npz layout.",
        {
            "command": " ".join(["python experiments/train_default.py", *(argv or sys.argv[1:])]),
            "low_res_epochs": args.low_epochs, "low_res_image_size": 14,
            "high_res_steps": args.high_steps, "extra_steps": args.extra_steps,
            "extra_learning_rates": extra_lrs,
            "batch_size": args.batch_size,
            "optimizer": "adamw + warmup cosine, label smoothing 0.1",
            "augmentation": augmentation_text(args.crop_pad),
            "wall_clock_s": round(time.time() - t_start),
        },
    )  # fmt: skip


def save_model(out: Path, params, config, test_x, test_y, name: str, description: str, training: dict):
    """Evaluate on the uint8 test images, then write a Google npz plus its card (recipe, command,
    test figures)."""
    result = accuracy(config, params, batches(to_model_range(test_x), test_y, 250))
    print(f"test top-1 {result['top1']:.4f} on {result['n']} images", flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    google.save_npz(out, jax.device_get(params))
    card = {
        "name": name, "description": description, "config": config.to_dict(),
        "dataset": "fashion_mnist (IDX files), test split 10000 images",
        "preprocessing": "uint8 / 127.5 - 1 (range [-1, 1], input_norm 'inception'); no resize",
        "training": training, "test_top1": result["top1"], "test_top5": result["top5"],
    }  # fmt: skip
    out.with_suffix(".json").write_text(json.dumps(card, indent=1) + "\n")
    print(f"wrote {out} and {out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
