"""Data-parallel (and optionally FSDP) evaluation and fine-tuning on JAX's own distributed runtime.

Everything here is ``jax.jit`` over a :class:`jax.sharding.Mesh` with explicit ``in_shardings`` /
``out_shardings`` (no ``pmap``), so one program runs unchanged on one CPU, eight GPUs in one host, or a
TPU pod with one process per host:

* :func:`initialize_distributed` starts ``jax.distributed`` when the environment is multi-process;
* :func:`make_mesh` lays all devices out on a ``("data", "fsdp")`` mesh;
* the batch is split over both axes (:func:`batch_sharding`); parameters and optimizer state are
  replicated, or with ``fsdp > 1`` each large >=2-D leaf has its largest divisible axis split over
  ``"fsdp"`` (:func:`tree_shardings`);
* :func:`shard_batch` turns each process's rows into global arrays, padding them to a multiple of the
  device count with masked-out rows; :func:`evaluate_accuracy` sums the masked counts inside the
  jitted program, so no example is dropped or counted twice;
* :func:`init_opt_state` builds the optimizer state on the mesh; :func:`make_sharded_train_step` is
  :func:`tofu_jax.train.make_train_step` with shardings;
* :func:`save_checkpoint` / :func:`restore_checkpoint` (Orbax) restore onto any mesh, e.g. a run saved
  on 2 devices resumes on 8 with FSDP.

The reduction :class:`~tofu_jax.schedule.Schedule` stays a static argument: one compiled program per
(schedule, global batch shape).
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from tofu_jax.errors import NonFiniteError, UserError
from tofu_jax.evaluate import check_images
from tofu_jax.models.vit import ViT, ViTConfig
from tofu_jax.schedule import Schedule
from tofu_jax.train import train_step_fn

DATA_AXIS = "data"
FSDP_AXIS = "fsdp"
BATCH_AXES = (DATA_AXIS, FSDP_AXIS)
FSDP_MIN_SIZE = 2**14  # leaves with fewer elements stay replicated under FSDP (not worth a gather)

# --------------------------------------------------------------------------------------------------
# Runtime and mesh
# --------------------------------------------------------------------------------------------------


def _int_env(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    if value and not value.lstrip("-").isdigit():
        raise UserError(f"${name} must be an integer, got {value!r}")
    return int(value) if value else None


def _cluster_detected() -> bool:
    """A launcher that starts several processes of this job (jax's auto-detection then fills in)."""
    env = os.environ
    for name in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
        if (_int_env(name) or 1) > 1:
            return True
    hosts = env.get("TPU_PROCESS_ADDRESSES") or env.get("TPU_WORKER_HOSTNAMES") or ""
    return "," in hosts or bool(env.get("MEGASCALE_COORDINATOR_ADDRESS"))


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    local_device_ids: int | list[int] | None = None,
    *,
    force: bool | None = None,
) -> bool:
    """Call ``jax.distributed.initialize`` when this job runs as several processes; else do nothing.

    Must run before anything else touches JAX devices. Multi-process is recognised from

    * explicit arguments, or ``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID``
      (multi-node GPU: one process per host or per GPU);
    * a launcher JAX can read by itself: SLURM (``SLURM_NTASKS > 1``), Open MPI, GKE TPU
      (``TPU_WORKER_HOSTNAMES``), multislice (``MEGASCALE_COORDINATOR_ADDRESS``);
    * ``force=True`` or ``TOFU_DISTRIBUTED=1``: a Cloud TPU VM pod, where JAX finds the workers from
      the VM metadata (``gcloud compute tpus tpu-vm ssh NAME --worker=all --command="TOFU_DISTRIBUTED=1
      python train.py"``).

    One process driving all local GPUs or the 8 TPU cores of one host needs nothing: every device
    is visible already. Returns whether the distributed runtime is (now) initialized.
    """
    if jax.distributed.is_initialized():
        return True
    coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS") or None
    num_processes = num_processes if num_processes is not None else _int_env("JAX_NUM_PROCESSES")
    process_id = process_id if process_id is not None else _int_env("JAX_PROCESS_ID")
    if force is None:
        force = os.environ.get("TOFU_DISTRIBUTED", "").strip().lower() in ("1", "true", "yes")
    explicit = coordinator_address is not None or num_processes is not None or process_id is not None
    if not (force or explicit or _cluster_detected()):
        return False
    if num_processes == 1 and not force:
        return False
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
        local_device_ids=local_device_ids,
    )
    return True


def make_mesh(fsdp: int = 1, devices: list | None = None) -> Mesh:
    """A ``("data", "fsdp")`` mesh over ``devices`` (default: every device of every process).

    ``fsdp=1`` is pure data parallelism (parameters replicated); ``fsdp=k`` splits large parameter and
    optimizer-state leaves ``k`` ways and keeps ``n / k`` data-parallel groups. The batch is split
    over all ``n`` devices either way.
    """
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    if fsdp < 1 or n % fsdp:
        raise UserError(f"fsdp={fsdp} must be a positive divisor of the device count {n}")
    return jax.make_mesh((n // fsdp, fsdp), BATCH_AXES, (AxisType.Auto, AxisType.Auto), devices=devices)


@functools.lru_cache(maxsize=1)
def _default_mesh() -> Mesh:
    return make_mesh()


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over every device of the mesh."""
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def fsdp_spec(shape: tuple[int, ...], fsdp_size: int, min_size: int = FSDP_MIN_SIZE) -> P:
    """Split the largest axis divisible by ``fsdp_size`` (the first among equals) of a >=2-D leaf.

    1-D/scalar leaves, leaves under ``min_size`` elements and leaves with no divisible axis stay
    replicated.
    """
    if fsdp_size <= 1 or len(shape) < 2 or math.prod(shape) < min_size:
        return P()
    axes = [i for i, d in enumerate(shape) if d % fsdp_size == 0]
    if not axes:
        return P()
    axis = max(axes, key=lambda i: (shape[i], -i))
    return P(*[FSDP_AXIS if i == axis else None for i in range(len(shape))])


def tree_shardings(tree: Any, mesh: Mesh, *, min_size: int = FSDP_MIN_SIZE) -> Any:
    """A :class:`NamedSharding` per leaf (arrays or ``ShapeDtypeStruct``): FSDP when the mesh has it.

    Depends only on each leaf's shape, so Adam's ``mu``/``nu`` get their parameter's layout.
    """
    size = mesh.shape[FSDP_AXIS]
    return jax.tree.map(lambda x: NamedSharding(mesh, fsdp_spec(tuple(np.shape(x)), size, min_size)), tree)


def _place(x, sharding: NamedSharding):
    if jax.process_count() == 1 or (isinstance(x, jax.Array) and not x.is_fully_addressable):
        return jax.device_put(x, sharding)
    host = np.asarray(x)  # multi-host: the same full value on every process
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])


def place(tree: Any, shardings: Any) -> Any:
    """Put every leaf of ``tree`` on the mesh with the matching sharding of ``shardings``."""
    return jax.tree.map(_place, tree, shardings)


def shard_tree(tree: Any, mesh: Mesh, *, min_size: int = FSDP_MIN_SIZE) -> Any:
    """Parameters or optimizer state on ``mesh``: replicated, or FSDP when ``mesh`` has ``fsdp > 1``."""
    return place(tree, tree_shardings(tree, mesh, min_size=min_size))


def init_opt_state(
    tx: optax.GradientTransformation, params, mesh: Mesh | None = None, *, min_size: int = FSDP_MIN_SIZE
) -> Any:
    """``tx.init(params)`` computed on the mesh, each leaf laid out by :func:`tree_shardings`."""
    mesh = mesh or _default_mesh()
    params = _on_mesh(params, mesh, min_size)
    shardings = tree_shardings(jax.eval_shape(tx.init, params), mesh, min_size=min_size)
    return jax.jit(tx.init, out_shardings=shardings)(params)


def _on_mesh(tree: Any, mesh: Mesh, min_size: int = FSDP_MIN_SIZE) -> Any:
    """``tree`` as it is when every leaf already lives on ``mesh``; else placed by :func:`shard_tree`."""
    leaves = jax.tree.leaves(tree)
    if all(
        isinstance(x, jax.Array) and isinstance(x.sharding, NamedSharding) and x.sharding.mesh == mesh
        for x in leaves
    ):
        return tree
    return shard_tree(tree, mesh, min_size=min_size)


def _shardings_of(tree: Any) -> Any:
    return jax.tree.map(lambda x: x.sharding, tree)


def _cache_key(tree: Any) -> tuple:
    leaves, treedef = jax.tree.flatten(tree)
    return treedef, tuple(x.sharding for x in leaves)


def gather(x: jax.Array) -> np.ndarray:
    """A global array as one NumPy array on every process."""
    if x.is_fully_addressable:
        return np.asarray(x)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


# --------------------------------------------------------------------------------------------------
# Batches
# --------------------------------------------------------------------------------------------------


def _local_batch_devices(mesh: Mesh) -> int:
    return len(batch_sharding(mesh).addressable_devices)


def shard_batch(
    images: np.ndarray,
    labels: np.ndarray,
    valid_mask: np.ndarray | int | None = None,
    mesh: Mesh | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """This process's rows -> global ``(images, labels, mask)`` split over the mesh's batch axes.

    Args:
      images: ``[b, H, W, C]`` local rows (on a pod each process passes its own, same ``b``).
      labels: ``[b]`` ints.
      valid_mask: ``[b]`` bools, or an int ``valid`` (the first ``valid`` rows are real, as yielded by
        :func:`tofu_jax.data.batching.batches`), or None (all real).
      mesh: default: all devices, data-parallel.
    Returns:
      Global arrays of ``process_count * b'`` rows, ``b'`` = ``b`` rounded up to a multiple of the
      local device count; the added rows are zeros with ``mask == False``.
    """
    mesh = mesh or _default_mesh()
    images, labels = np.asarray(images, np.float32), np.asarray(labels, np.int32)
    b = len(images)
    if valid_mask is None:
        mask = np.ones(b, bool)
    elif np.ndim(valid_mask) == 0:
        mask = np.arange(b) < int(valid_mask)
    else:
        mask = np.asarray(valid_mask, bool)
    if len(labels) != b or len(mask) != b:
        raise UserError(f"batch sizes differ: images {b}, labels {len(labels)}, mask {len(mask)}")
    pad = -b % _local_batch_devices(mesh)
    if pad:
        images = np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)])
        labels = np.concatenate([labels, np.zeros(pad, labels.dtype)])
        mask = np.concatenate([mask, np.zeros(pad, bool)])
    sharding = batch_sharding(mesh)
    return tuple(jax.make_array_from_process_local_data(sharding, x) for x in (images, labels, mask))


# --------------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------------

_EVAL_CACHE: dict = {}


def _eval_fn(config: ViTConfig, mesh: Mesh, params) -> Callable:
    """``f(params, images, labels, mask, schedule=) -> (logits, [top1, top5, n, nonfinite])`` jitted."""
    key = (config, mesh, *_cache_key(params))
    if key not in _EVAL_CACHE:
        model = ViT(config)
        bs, rep = batch_sharding(mesh), replicated(mesh)
        k = min(5, config.num_classes)

        @functools.partial(
            jax.jit,
            static_argnums=(4,),
            in_shardings=(_shardings_of(params), bs, bs, bs),
            out_shardings=(bs, rep),
        )
        def f(params, images, labels, mask, schedule: Schedule | None = None):
            logits = model.apply({"params": params}, images, schedule)
            top = jax.lax.top_k(logits, k)[1]
            m = mask.astype(jnp.int32)
            counts = jnp.stack(
                [
                    jnp.sum((top[:, 0] == labels) * m),
                    jnp.sum(jnp.any(top == labels[:, None], axis=-1) * m),
                    jnp.sum(m),
                    jnp.sum(~jnp.all(jnp.isfinite(logits), axis=-1) * m),
                ]
            )
            return logits, counts

        _EVAL_CACHE[key] = f
    return _EVAL_CACHE[key]


def evaluate_accuracy(
    config: ViTConfig,
    params,
    batches: Iterable[tuple[np.ndarray, np.ndarray, Any]],
    schedule: Schedule | None = None,
    mesh: Mesh | None = None,
    *,
    progress: Callable[[int], None] | None = None,
    return_logits: bool = False,
) -> dict:
    """Top-1/top-5 over ``(images, labels, valid)`` batches, sharded over ``mesh``.

    Same result as :func:`tofu_jax.evaluate.accuracy`. Each process passes its own batches (all
    processes the same number of them); ``valid`` is an int or a bool mask. Batches are padded to a
    multiple of the device count and the padding masked out; the counts are summed over devices inside
    the jitted program, so every example counts exactly once. ``params`` not already on ``mesh`` are
    placed there (replicated, or FSDP on an ``fsdp > 1`` mesh). ``return_logits`` adds ``"logits"``:
    this process's real rows, in order.
    """
    mesh = mesh or _default_mesh()
    params = _on_mesh(params, mesh)
    f = _eval_fn(config, mesh, params)
    totals = np.zeros(4, np.int64)
    kept = []
    for index, (images, labels, valid) in enumerate(batches):
        check_images(images, f"batch {index}")
        x, y, m = shard_batch(images, labels, valid, mesh)
        logits, counts = f(params, x, y, m, schedule)
        counts = np.asarray(counts)
        if return_logits:
            kept.append(_local_rows(logits)[_local_rows(m)])
        totals += counts
        if progress:
            progress(int(counts[2]))
    top1, top5, n, bad = (int(v) for v in totals)
    if bad:
        name = schedule.describe() if schedule is not None else "none"
        raise NonFiniteError(f"the model produced NaN/Inf logits for {bad} examples with schedule {name}")
    if n == 0:
        raise UserError("no examples to evaluate")
    out = {"top1": top1 / n, "top5": top5 / n, "n": n}
    if return_logits:
        out["logits"] = np.concatenate(kept) if kept else np.zeros((0, config.num_classes), np.float32)
    return out


def _local_rows(x: jax.Array) -> np.ndarray:
    """This process's rows of a batch-sharded global array, in global order."""
    if x.is_fully_addressable:
        return np.asarray(x)
    shards = {s.index[0].start or 0: s.data for s in x.addressable_shards}  # replicas share a start
    return np.concatenate([np.asarray(shards[k]) for k in sorted(shards)])


def sharded_logits(
    config: ViTConfig,
    params,
    images: np.ndarray,
    schedule: Schedule | None = None,
    mesh: Mesh | None = None,
) -> np.ndarray:
    """Logits ``[b, classes]`` of this process's ``images``, computed sharded over ``mesh``."""
    mesh = mesh or _default_mesh()
    params = _on_mesh(params, mesh)
    x, y, m = shard_batch(images, np.zeros(len(images), np.int32), None, mesh)
    logits, _ = _eval_fn(config, mesh, params)(params, x, y, m, schedule)
    return _local_rows(logits)[: len(images)]


# --------------------------------------------------------------------------------------------------
# Fine-tuning
# --------------------------------------------------------------------------------------------------


def make_sharded_train_step(
    model: ViT, tx: optax.GradientTransformation, mesh: Mesh, label_smoothing: float = 0.0
) -> Callable:
    """``step(params, opt_state, images, labels, rng, schedule=None) -> (params, opt_state, metrics)``.

    The math of :func:`tofu_jax.train.make_train_step` (mean loss over the global batch), jitted with
    ``in_shardings``/``out_shardings``: the batch split over the mesh, parameters and optimizer state
    keeping the layout they arrive with (:func:`shard_tree` / :func:`restore_checkpoint`; unplaced
    trees are placed with the default layout), metrics replicated. ``images``/``labels`` are global
    arrays from :func:`shard_batch` (its mask is not used: train on full batches) or, single-process,
    host arrays whose batch divides the device count. Params and optimizer state are donated.
    """
    cache: dict = {}
    bs, rep = batch_sharding(mesh), replicated(mesh)
    train_math = train_step_fn(model, tx, label_smoothing)

    def build(params, opt_state):
        ps, os_ = _shardings_of(params), _shardings_of(opt_state)

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
        params, opt_state = _on_mesh(params, mesh), _on_mesh(opt_state, mesh)
        key = (_cache_key(params), _cache_key(opt_state))
        if key not in cache:
            cache[key] = build(params, opt_state)
        return cache[key](params, opt_state, images, labels, rng, schedule)

    return step


# --------------------------------------------------------------------------------------------------
# Checkpoints that survive a change of device count
# --------------------------------------------------------------------------------------------------


def _ocp():
    import orbax.checkpoint as ocp

    return ocp


def _abs_path(path: str | Path) -> str:
    path = str(path)
    return path if "://" in path else str(Path(path).absolute())


def save_checkpoint(path: str | Path, params, opt_state, step: int, meta: dict | None = None) -> None:
    """Save sharded ``params``/``opt_state``/``step`` (+ JSON ``meta``) as an Orbax checkpoint.

    Every process calls it (each writes its own shards); ``path`` is a directory, local or ``gs://``,
    on storage all processes share; an existing checkpoint there is replaced. The layout on disk
    does not depend on the mesh: :func:`restore_checkpoint` reshards onto any other one.
    """
    ocp = _ocp()
    state = {"params": params, "opt_state": opt_state, "step": np.asarray(step, np.int32)}
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
        ckptr.save(
            _abs_path(path),
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta or {})),
            force=True,
        )


def restore_checkpoint(
    path: str | Path,
    params_like,
    opt_state_like,
    mesh: Mesh | None = None,
    *,
    min_size: int = FSDP_MIN_SIZE,
) -> tuple[Any, Any, int, dict]:
    """``(params, opt_state, step, meta)`` from :func:`save_checkpoint`, laid out on ``mesh``.

    ``params_like``/``opt_state_like`` give the tree structure, shapes and dtypes (arrays or
    ``jax.eval_shape`` output). The restored leaves get :func:`tree_shardings` of ``mesh`` (FSDP when
    the mesh has an ``fsdp`` axis > 1), whatever mesh saved them. A ``.npz`` written by
    :func:`tofu_jax.train.save_train_state` is accepted too (read whole on every process).
    """
    mesh = mesh or _default_mesh()
    if str(path).endswith(".npz"):
        from tofu_jax.train import load_train_state

        params, opt_state, step, meta = load_train_state(path, params_like, opt_state_like)
        return (
            shard_tree(params, mesh, min_size=min_size),
            shard_tree(opt_state, mesh, min_size=min_size),
            step,
            meta,
        )
    ocp = _ocp()
    like = {"params": params_like, "opt_state": opt_state_like, "step": np.zeros((), np.int32)}
    shardings = tree_shardings(like, mesh, min_size=min_size)
    target = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s), like, shardings
    )
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
        out = ckptr.restore(
            _abs_path(path),
            args=ocp.args.Composite(state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()),
        )
    state = out["state"]
    meta = out["meta"] if out["meta"] is not None else {}
    return state["params"], state["opt_state"], int(gather(state["step"])), dict(meta)
