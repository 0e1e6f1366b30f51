"""Meshes and shardings: the one execution layout of evaluation, profiling and training.

Everything runs as ``jax.jit`` over a :class:`jax.sharding.Mesh` with explicit shardings (no
``pmap``), so one program runs unchanged on one CPU, eight GPUs in one host, or a TPU pod with one
process per host:

* :func:`initialize_distributed` starts ``jax.distributed`` when the environment is multi-process;
* :func:`make_mesh` lays the devices out on a ``("data", "fsdp")`` mesh; :func:`default_mesh` is every
  device, data-parallel (a mesh of one device on a one-device machine);
* the batch is split over both axes (:func:`batch_sharding`); parameters and optimizer state are
  replicated, or with ``fsdp > 1`` each large >=2-D leaf has its largest divisible axis split over
  ``"fsdp"`` (:func:`tree_shardings`);
* :func:`shard_batch` turns each process's rows into global arrays, padding them to a multiple of the
  device count with masked-out rows; :func:`place_batch` puts rows every process shares (calibration
  images) on the mesh without padding.

:func:`tofu_jax.evaluate.accuracy`, :func:`tofu_jax.train.make_train_step` and the Orbax train state of
:mod:`tofu_jax.train` build on these.
"""

from __future__ import annotations

import functools
import math
import os
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from tofu_jax.errors import UserError

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
def default_mesh() -> Mesh:
    """Every device, data-parallel: what evaluation, profiling and training run on unless told."""
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


def on_mesh(tree: Any, mesh: Mesh, min_size: int = FSDP_MIN_SIZE) -> Any:
    """``tree`` as it is when every leaf already lives on ``mesh``; else placed by :func:`shard_tree`."""
    leaves = jax.tree.leaves(tree)
    if all(
        isinstance(x, jax.Array) and isinstance(x.sharding, NamedSharding) and x.sharding.mesh == mesh
        for x in leaves
    ):
        return tree
    return shard_tree(tree, mesh, min_size=min_size)


def shardings_of(tree: Any) -> Any:
    return jax.tree.map(lambda x: x.sharding, tree)


def cache_key(tree: Any) -> tuple:
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
    mesh = mesh or default_mesh()
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


def place_batch(x, mesh: Mesh | None = None) -> jax.Array:
    """The same host rows ``x [B, ...]`` on every process, as one array on ``mesh``.

    Split over the batch axes when one process holds every device and ``B`` divides the device count,
    else replicated: what the calibration passes (profiler, planner) run on, so a batch is never
    padded and every statistic sees exactly the given rows.
    """
    mesh = mesh or default_mesh()
    split = jax.process_count() == 1 and len(x) % mesh.size == 0
    return _place(np.asarray(x), batch_sharding(mesh) if split else replicated(mesh))


def local_rows(x: jax.Array) -> np.ndarray:
    """This process's rows of a batch-sharded global array, in global order."""
    if x.is_fully_addressable:
        return np.asarray(x)
    shards = {s.index[0].start or 0: s.data for s in x.addressable_shards}  # replicas share a start
    return np.concatenate([np.asarray(shards[k]) for k in sorted(shards)])
