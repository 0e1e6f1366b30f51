"""Training on a mesh with optax: one train step and one train-state format (Orbax).

The schedule is static in the train step, so fine-tuning *with* token reduction active (which
recovers accuracy, as ToMe observed) compiles one program per schedule, like evaluation. The step and
the optimizer state run on the mesh of :mod:`tofu_jax.parallel` (every device by default; FSDP when
the mesh has an ``fsdp`` axis > 1). Train states are Orbax checkpoints that restore onto any mesh, e.g.
a run saved on 2 devices resumes on 8 with FSDP; Google ``.npz`` stays the model import/export format.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from tofu_jax.checkpoints.common import CheckpointError
from tofu_jax.models.vit import ViT
from tofu_jax.parallel import (
    FSDP_MIN_SIZE,
    batch_sharding,
    cache_key,
    default_mesh,
    gather,
    on_mesh,
    replicated,
    shardings_of,
    tree_shardings,
)
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


def _train_math(model: ViT, tx: optax.GradientTransformation, label_smoothing: float):

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


def init_opt_state(
    tx: optax.GradientTransformation, params, mesh: Mesh | None = None, *, min_size: int = FSDP_MIN_SIZE
) -> Any:
    """``tx.init(params)`` computed on the mesh, each leaf laid out by :func:`tree_shardings`."""
    mesh = mesh or default_mesh()
    params = on_mesh(params, mesh, min_size)
    shardings = tree_shardings(jax.eval_shape(tx.init, params), mesh, min_size=min_size)
    return jax.jit(tx.init, out_shardings=shardings)(params)


def make_train_step(
    model: ViT, tx: optax.GradientTransformation, mesh: Mesh | None = None, label_smoothing: float = 0.0
) -> Callable:
    """``step(params, opt_state, images, labels, rng, schedule=None) -> (params, opt_state, metrics)``.

    Cross-entropy with label smoothing over the global batch and one optax update, jitted with the
    schedule static and explicit shardings on ``mesh`` (default: every device): the batch split over
    the mesh, parameters and optimizer state keeping the layout they arrive with
    (:func:`tofu_jax.parallel.shard_tree` / :func:`load_train_state`; unplaced trees are placed with
    the default layout), metrics replicated. ``images``/``labels`` are global
    arrays from :func:`shard_batch` (its mask is not used: train on full batches) or, single-process,
    host arrays whose batch divides the device count. Params and optimizer state are donated.
    """
    mesh = mesh or default_mesh()
    cache: dict = {}
    bs, rep = batch_sharding(mesh), replicated(mesh)
    train_math = _train_math(model, tx, label_smoothing)

    def build(params, opt_state):
        ps, os_ = shardings_of(params), shardings_of(opt_state)

        @functools.partial(
            jax.jit,
            static_argnums=(5,),
            in_shardings=(ps, os_, bs, bs, rep),
            out_shardings=(ps, os_, rep),
            donate_argnums=(0, 1),
        )
        def step(params, opt_state, images, labels, rng, schedule: Schedule | None = None):
            return train_math(params, opt_state, images, labels, rng, schedule)

        return step

    def step(params, opt_state, images, labels, rng, schedule: Schedule | None = None):
        params, opt_state = on_mesh(params, mesh), on_mesh(opt_state, mesh)
        key = (cache_key(params), cache_key(opt_state))
        if key not in cache:
            cache[key] = build(params, opt_state)
        return cache[key](params, opt_state, images, labels, rng, schedule)

    return step


def _ocp():
    import orbax.checkpoint as ocp

    return ocp


def _abs_path(path: str | Path) -> str:
    path = str(path)
    return path if "://" in path else str(Path(path).absolute())


def save_train_state(path: str | Path, params, opt_state, step: int, meta: dict | None = None) -> None:
    """Save sharded ``params``/``opt_state``/``step`` (+ JSON ``meta``) as an Orbax checkpoint.

    Every process calls it (each writes its own shards); ``path`` is a directory, local or ``gs://``,
    on storage all processes share; an existing checkpoint there is replaced. The layout on disk
    does not depend on the mesh: :func:`load_train_state` reshards onto any other one.
    """
    ocp = _ocp()
    state = {"params": params, "opt_state": opt_state, "step": np.asarray(step, np.int32)}
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
        ckptr.save(
            _abs_path(path),
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta or {})),
            force=True,
        )


def load_train_state(
    path: str | Path,
    params_like,
    opt_state_like,
    mesh: Mesh | None = None,
    *,
    min_size: int = FSDP_MIN_SIZE,
) -> tuple[Any, Any, int, dict]:
    """``(params, opt_state, step, meta)`` from :func:`save_train_state`, laid out on ``mesh``.

    ``params_like``/``opt_state_like`` give the tree structure, shapes and dtypes (arrays or
    ``jax.eval_shape`` output). The restored leaves get :func:`tree_shardings` of ``mesh`` (FSDP when
    the mesh has an ``fsdp`` axis > 1), whatever mesh saved them.
    """
    mesh = mesh or default_mesh()
    ocp = _ocp()
    like = {"params": params_like, "opt_state": opt_state_like, "step": np.zeros((), np.int32)}
    shardings = tree_shardings(like, mesh, min_size=min_size)
    target = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s), like, shardings
    )
    if not (Path(path) / "state").is_dir() and "://" not in str(path):
        raise CheckpointError(
            f"{path} is not a tofu_jax train state (no Orbax 'state' item); delete it or use another "
            "output directory"
        )
    try:
        with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
            out = ckptr.restore(
                _abs_path(path),
                args=ocp.args.Composite(state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()),
            )
    except (ValueError, KeyError, TypeError) as e:  # Orbax: tree structure or shapes do not match
        raise CheckpointError(
            f"train state {path} belongs to another model or optimizer ({str(e)[:300]}); resume with the "
            "same model and settings, or use another output directory"
        ) from None
    state = out["state"]
    meta = out["meta"] if out["meta"] is not None else {}
    return state["params"], state["opt_state"], int(gather(state["step"])), dict(meta)
