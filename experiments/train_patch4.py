"""Train the second evaluation model of the planner study: a Fashion-MNIST ViT with patch 4.

Another shape than the bundled model: 28x28 images, patch 4 -> 49 patch tokens + CLS (50 tokens),
depth 8, width 64, 2 heads, MLP 256; one warm-up-cosine AdamW run at full resolution. About 40
minutes on 2 CPU cores (42 for the committed model, with other jobs running); checkpoints to
``--workdir`` and resumes from there when re-run.

    python -m experiments.train_patch4 --workdir /tmp/fmnist_p4

Writes ``experiments/results/models/fmnist_p4.npz`` (Google npz layout) and its card (``.json``),
which ``tofu-jax --checkpoint experiments/results/models/fmnist_p4.npz`` loads.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

from experiments.common import RESULTS
from experiments.train_default import run_phase, save_model
from tofu_jax.data import idx
from tofu_jax.data.transforms import to_model_range
from tofu_jax.models.vit import ViTConfig, init_params
from tofu_jax.train import OptimConfig

CONFIG = ViTConfig(
    image_size=28, patch_size=4, channels=1, num_classes=10,
    width=64, depth=8, mlp_dim=256, num_heads=2, input_norm="inception",
)  # fmt: skip


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="/tmp/tofu_jax_train_patch4")
    p.add_argument("--data-dir", default=None, help="directory with Fashion-MNIST IDX files")
    p.add_argument("--steps", type=int, default=2400)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--crop-pad", type=int, default=2, help="random-crop padding in pixels")
    p.add_argument("--ckpt-every", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(RESULTS / "models" / "fmnist_p4.npz"))
    args = p.parse_args(argv)
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    train_x, train_y = idx.load_split("train", args.data_dir)
    test_x, test_y = idx.load_split("test", args.data_dir)
    params = init_params(CONFIG, args.seed)
    optim = OptimConfig(learning_rate=args.lr, warmup_steps=200, total_steps=args.steps)
    with open(Path(args.workdir) / "train_log.csv", "a", newline="") as fh:
        params = run_phase(
            "low", CONFIG, params, to_model_range(train_x), train_y, optim, args, csv.writer(fh), fh
        )
    save_model(
        Path(args.out), params, CONFIG, test_x, test_y, "fmnist_p4",
        "ViT (patch 4, depth 8, width 64) trained on Fashion-MNIST by experiments/train_patch4.py; "
        "CLS token at index 0, Google npz layout.",
        {
            "command": " ".join(["python -m experiments.train_patch4", *(argv or sys.argv[1:])]),
            "steps": args.steps, "batch_size": args.batch_size, "learning_rate": args.lr,
            "optimizer": "adamw + warmup cosine, label smoothing 0.1",
            "augmentation": f"random crop (pad {args.crop_pad} px) + horizontal flip",
            "wall_clock_s": round(time.time() - t_start),
        },
    )  # fmt: skip


if __name__ == "__main__":
    main()
