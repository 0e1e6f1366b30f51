"""Fine-tune a ViT with a token-reduction schedule active (ToMe: training with merging recovers
accuracy), with augmentation, warm-up + cosine learning rate, on a mesh, resumable from Orbax train
states."""

from __future__ import annotations

import dataclasses
import numbers
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from tofu_jax.data.transforms import augment
from tofu_jax.errors import UserError
from tofu_jax.evaluate import check_images
from tofu_jax.models.vit import ViT, ViTConfig
from tofu_jax.parallel import default_mesh, shard_batch
from tofu_jax.schedule import Schedule
from tofu_jax.train import (
    OptimConfig,
    init_opt_state,
    load_train_state,
    make_optimizer,
    make_train_step,
    save_train_state,
)


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    steps: int = 100
    batch_size: int = 64
    learning_rate: float = 1e-4
    warmup_steps: int = 10
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    ckpt_every: int = 50
    seed: int = 0
    augment_pad: int = 2

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value, integral = getattr(self, f.name), f.type in ("int", int)
            kind = numbers.Integral if integral else numbers.Real
            if not isinstance(value, kind) or isinstance(value, bool):
                wanted = "an integer" if integral else "a number"
                raise UserError(f"FinetuneConfig.{f.name} must be {wanted}, got {value!r}")
        if self.steps < 1 or self.batch_size < 1:
            raise UserError(
                f"finetune needs steps >= 1 and batch size >= 1, got {self.steps} and {self.batch_size}"
            )
        if self.augment_pad < 0:
            raise UserError(f"crop padding must be >= 0 pixels, got {self.augment_pad}")
        if self.ckpt_every < 1 or self.warmup_steps < 0:
            raise UserError(f"ckpt_every must be >= 1 and warmup_steps >= 0, got {self.ckpt_every}, "
                            f"{self.warmup_steps}")  # fmt: skip
        lr, wd, ls = self.learning_rate, self.weight_decay, self.label_smoothing
        if not (0 < lr < float("inf")) or not 0 <= wd < float("inf") or not 0 <= ls < 1:
            raise UserError(
                "need learning_rate > 0, weight_decay >= 0 and label_smoothing in [0, 1), "
                f"got {lr}, {wd}, {ls}"
            )


def finetune(
    config: ViTConfig,
    params,
    schedule: Schedule | None,
    images: np.ndarray,
    labels: np.ndarray,
    ft: FinetuneConfig,
    *,
    workdir: str | Path | None = None,
    progress: Callable[[int, dict], None] | None = None,
    mesh: Mesh | None = None,
):
    """Train ``params`` for ``ft.steps`` steps with ``schedule`` active; returns ``(params, log)``.

    Args:
      images: ``[N, H, W, C]`` float32 in [-1, 1] from the training split.  labels: ``[N]`` int.
      workdir: where the train state (``finetune_state/``, Orbax) is written every ``ckpt_every`` steps
        and resumed from.
      mesh: devices to train on (default: every device, data-parallel); the batch is split over them.
    """
    mesh = mesh or default_mesh()
    if ft.batch_size % mesh.size:
        raise UserError(
            f"batch size {ft.batch_size} does not split over {mesh.size} devices; pass a multiple of "
            f"{mesh.size}"
        )
    if len(images) < ft.batch_size:
        raise UserError(f"need at least batch_size={ft.batch_size} training images, got {len(images)}")
    check_images(images, "training images")
    labels = np.asarray(labels)
    if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
        raise UserError(
            f"labels must be {len(images)} integers (one per image), got {labels.dtype} {labels.shape}"
        )
    if labels.min() < 0 or labels.max() >= config.num_classes:
        raise UserError(
            f"labels {labels.min()}..{labels.max()} outside the model's {config.num_classes} classes"
        )
    if schedule is not None:
        schedule.validate(config.depth, config.num_tokens, config.num_prefix)
    optim = OptimConfig(
        learning_rate=ft.learning_rate,
        weight_decay=ft.weight_decay,
        warmup_steps=ft.warmup_steps,
        total_steps=ft.steps,
        label_smoothing=ft.label_smoothing,
    )
    tx = make_optimizer(optim)
    params = jax.tree_util.tree_map(jnp.array, params)  # the step donates its inputs: keep the caller's
    opt_state = init_opt_state(tx, params, mesh)
    step_fn = make_train_step(ViT(config), tx, mesh, ft.label_smoothing)
    state_path = Path(workdir) / "finetune_state" if workdir else None
    step = 0
    if state_path is not None and state_path.exists():
        params, opt_state, step, meta = load_train_state(state_path, params, opt_state, mesh)
        if meta.get("schedule") != (schedule.to_dict() if schedule else None):
            raise UserError(f"{state_path} was written for another schedule; use a fresh --out-dir")
    meta = {"schedule": schedule.to_dict() if schedule else None, "finetune": dataclasses.asdict(ft)}
    key = jax.random.PRNGKey(ft.seed)
    log = []
    t0 = time.time()
    while step < ft.steps:
        # The batch of step s depends only on (seed, s): resuming reproduces the same data order.
        rng = np.random.default_rng([ft.seed, step])
        sel = rng.choice(len(images), ft.batch_size, replace=False)
        x = augment(images[sel], rng, pad=ft.augment_pad)
        x, y, _ = shard_batch(x, labels[sel], None, mesh)
        params, opt_state, metrics = step_fn(params, opt_state, x, y, jax.random.fold_in(key, step), schedule)
        step += 1
        m = {k: float(v) for k, v in metrics.items()} | {"step": step, "elapsed_s": time.time() - t0}
        log.append(m)
        if progress:
            progress(step, m)
        if state_path is not None and (step % ft.ckpt_every == 0 or step == ft.steps):
            save_train_state(state_path, params, opt_state, step, meta)
    return params, log
