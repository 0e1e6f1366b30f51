"""Training and fine-tuning with optax; resumable ``.npz`` train states (no pickle).

The schedule is static in the train step, so fine-tuning *with* token reduction active (as ToMe
observed, it recovers accuracy) compiles one program per schedule like evaluation does.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tofu_jax.checkpoints.common import (
    CheckpointError,
    flat_arrays_to_tree,
    npz_load,
    npz_save,
    tree_to_flat_arrays,
)
from tofu_jax.models.vit import ViT
from tofu_jax.schedule import Schedule


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warm-up and cosine decay."""

    learning_rate: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 200
    total_steps: int = 1000
    end_lr_fraction: float = 0.01
    grad_clip: float = 1.0
    label_smoothing: float = 0.1


def make_optimizer(cfg: OptimConfig) -> optax.GradientTransformation:
    lr = optax.warmup_cosine_decay_schedule(
        0.0,
        cfg.learning_rate,
        max(cfg.warmup_steps, 1),
        max(cfg.total_steps, cfg.warmup_steps + 1),
        cfg.learning_rate * cfg.end_lr_fraction,
    )

    # No weight decay on biases, norms, embeddings of tokens/positions.
    def decay_mask(params):
        return jax.tree_util.tree_map_with_path(
            lambda p, x: x.ndim >= 2 and "pos_embedding" not in jax.tree_util.keystr(p), params
        )

    return optax.chain(
        optax.clip_by_global_norm(cfg.grad_clip),
        optax.adamw(lr, weight_decay=cfg.weight_decay, mask=decay_mask),
    )


def train_step_fn(model: ViT, tx: optax.GradientTransformation, label_smoothing: float = 0.0):
    """The un-jitted step ``(params, opt_state, images, labels, rng, schedule) -> (params, opt_state,
    metrics)``: cross-entropy with label smoothing, one optax update. Jit it with the shardings you
    need (:func:`make_train_step` for one device, ``parallel.make_sharded_train_step`` for a mesh)."""

    def step(params, opt_state, images, labels, rng, schedule: Schedule | None = None):
        def loss_fn(p):
            logits = model.apply({"params": p}, images, schedule, train=True, rngs={"dropout": rng})
            onehot = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
            loss = optax.softmax_cross_entropy(logits, onehot).mean()
            return loss, logits

        (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        acc = jnp.mean(jnp.argmax(logits, -1) == labels)
        return params, opt_state, {"loss": loss, "accuracy": acc, "grad_norm": optax.global_norm(grads)}

    return step


def make_train_step(model: ViT, tx: optax.GradientTransformation, label_smoothing: float = 0.0):
    """``step(params, opt_state, images, labels, rng, schedule) -> (params, opt_state, metrics)``, jitted
    with the schedule static and params / optimizer state donated."""
    step = train_step_fn(model, tx, label_smoothing)
    return jax.jit(step, static_argnames=("schedule",), donate_argnums=(0, 1))


def save_train_state(path: str | Path, params, opt_state, step: int, meta: dict[str, Any]) -> None:
    """Params, optimizer state and step in one ``.npz``; ``meta`` stored as JSON text."""
    flat = {"params" + k: v for k, v in tree_to_flat_arrays(params).items()}
    flat.update({"opt" + k: v for k, v in tree_to_flat_arrays(opt_state).items()})
    flat["__step__"] = np.asarray(step, np.int64)
    flat["__meta__"] = np.asarray(json.dumps(meta))
    npz_save(path, flat)


def load_train_state(path: str | Path, params_like, opt_state_like):
    """Inverse of :func:`save_train_state`: ``(params, opt_state, step, meta)``."""
    flat = npz_load(path)
    try:
        step, meta = int(flat["__step__"]), json.loads(str(flat["__meta__"]))
        if not isinstance(meta, dict):
            raise TypeError("__meta__ is not an object")
    except (KeyError, ValueError, TypeError):  # json.JSONDecodeError is a ValueError
        raise CheckpointError(
            f"{path} is not a tofu_jax train state (no readable __step__/__meta__); delete it or use "
            "another output directory"
        ) from None
    try:
        params = flat_arrays_to_tree(
            {k[6:]: v for k, v in flat.items() if k.startswith("params")}, params_like
        )
        opt = flat_arrays_to_tree({k[3:]: v for k, v in flat.items() if k.startswith("opt")}, opt_state_like)
    except CheckpointError as e:
        detail = str(e)[:300]
        raise CheckpointError(
            f"train state {path} belongs to another model or optimizer ({detail}...); resume with the same "
            "model and settings, or use another output directory"
        ) from None
    return params, opt, step, meta
