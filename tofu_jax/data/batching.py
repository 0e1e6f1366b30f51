"""Index order, sharding and batching: one :func:`batches` for in-memory arrays and random-access sources.

Every batch has the same shape ``(images [B, ...], labels [B], valid)``: the last partial batch is
padded by repeating its first row and ``valid`` counts its real rows, so one compiled program serves
every batch and metrics never count the padding. With ``process_count > 1`` each process takes a
disjoint contiguous slice of the (shuffled) index order, and every process yields the same number of
batches (a process whose slice ran out yields fully padded ``valid == 0`` batches), so collective
steps stay in lockstep.

Sources (:mod:`tofu_jax.data.sources`) are read and preprocessed lazily, batch by batch, in the
calling thread or a thread pool that works ``ahead`` batches in advance. Training augmentation of
example ``i`` is drawn from ``np.random.default_rng([seed, epoch, i])``, so it depends only on the
seed, the epoch and the index, never on batching or on how many processes share the split.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from tofu_jax.data import transforms
from tofu_jax.data.sources import check_labels, open_split
from tofu_jax.data.transforms import IMAGENET_RATIO, IMAGENET_SCALE
from tofu_jax.errors import DataError, UserError

Batch = tuple[np.ndarray, np.ndarray, int]


# --------------------------------------------------------------------------------------------------
# Index order and sharding
# --------------------------------------------------------------------------------------------------


def shard_indices(
    n: int,
    process_index: int = 0,
    process_count: int = 1,
    *,
    shuffle_seed: int | None = None,
    epoch: int = 0,
) -> np.ndarray:
    """This process's example indices: a contiguous slice of ``range(n)`` (or of its permutation).

    The permutation comes from ``default_rng([shuffle_seed, epoch])`` and is identical on every
    process; the slices (sizes differ by at most one) are disjoint and together cover ``range(n)``.
    """
    if not 0 <= process_index < process_count:
        raise UserError(f"process_index {process_index} not in [0, {process_count})")
    order = (
        np.random.default_rng([shuffle_seed, epoch]).permutation(n)
        if shuffle_seed is not None
        else np.arange(n)
    )
    bounds = [(n * p) // process_count for p in range(process_count + 1)]
    return order[bounds[process_index] : bounds[process_index + 1]]


def num_batches(n: int, batch_size: int, process_count: int = 1, drop_remainder: bool = False) -> int:
    """Batches each process yields for a split of ``n`` examples (the same on every process)."""
    if drop_remainder:
        return (n // process_count) // batch_size
    per_process = -(-n // process_count)  # ceil: the largest share
    return -(-per_process // batch_size)


def subset(n: int, limit: int | None, *, seed: int, offset: int = 0) -> np.ndarray:
    """Sorted indices ``[k]`` of a seeded draw of ``limit`` out of ``n`` (all of them when ``limit``
    is None or 0), skipping the first ``offset`` of the draw (disjoint calibration and search sets)."""
    if not limit:
        return np.arange(n)
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[offset : offset + limit])


# --------------------------------------------------------------------------------------------------
# Batches
# --------------------------------------------------------------------------------------------------


def _example_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, int(index)])


def _read(source, indices: Sequence[int]) -> list[dict[str, Any]]:
    keys = [int(i) for i in indices]
    try:
        getitems = getattr(source, "__getitems__", None)
        if getitems is not None and len(keys) > 1:
            try:
                return list(getitems(keys))  # one batched read (ArrayRecord reads in parallel)
            except TypeError:  # tfds.testing.mock_data's __getitems__ is not bound; read one by one
                pass
        return [source[k] for k in keys]
    except ImportError as e:
        raise DataError(
            "decoding TFDS images without TensorFlow needs Pillow or OpenCV "
            f"(pip install pillow): {' '.join(str(e).split())}"
        ) from None


def batches(
    data: np.ndarray | Sequence[dict[str, Any]] | str,
    labels: np.ndarray | None = None,
    batch_size: int = 0,
    *,
    split: str | None = None,
    data_dir: str | Path | None = None,
    indices: Sequence[int] | np.ndarray | None = None,
    image_size: int | None = None,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
    train: bool = False,
    seed: int = 0,
    epoch: int = 0,
    shuffle: bool | None = None,
    rng: np.random.Generator | None = None,
    crop_fraction: float = 0.875,
    scale: tuple[float, float] = IMAGENET_SCALE,
    ratio: tuple[float, float] = IMAGENET_RATIO,
    flip: bool = True,
    channels: int | None = None,
    process_index: int = 0,
    process_count: int = 1,
    drop_remainder: bool = False,
    num_workers: int = 0,
    image_key: str = "image",
    label_key: str = "label",
) -> Iterator[Batch]:
    """One epoch of fixed-size batches ``(images [B, ...], labels [B], valid)``.

    ``data`` is either in-memory arrays, ``images [N, H, W, C]`` with ``labels [N]`` (rows are taken
    as they are), or examples read on demand: a random-access source or a TFDS name (then ``split`` is
    required), each example preprocessed to ``float32 [S, S, C]`` (``labels int32 [B]``).

    The source is opened and the arguments checked when this is called (errors surface here, not at
    the first ``next``); examples are read and preprocessed lazily, batch by batch.

    Args:
      data: ``images [N, H, W, C]`` (with ``labels``), a TFDS name, or an opened random-access source.
      labels: ``[N]`` labels of in-memory ``images``; None for sources.
      batch_size: per-process batch size.
      split / data_dir: the TFDS split and data directory when ``data`` is a name.
      indices: the examples to batch (default: all); shuffling and sharding reorder these.
      image_size: output side ``S`` of the train/eval preprocessing of source examples.
      transform: per-example ``uint8 [H, W, C] -> float32 [S, S, C]`` in place of the train/eval
        preprocessing (e.g. a model's own recipe, :func:`~tofu_jax.data.transforms.preprocess`).
      train: random-resized crop + flip (else resize + central crop with ``crop_fraction``).
      seed / epoch: drive the shuffle (``default_rng([seed, epoch])``) and the per-example augmentation.
      shuffle: defaults to ``train``.
      rng: shuffle with ``rng.permutation`` instead (one process only).
      channels: None keeps the dataset's channels; 3 turns grayscale into RGB, 1 RGB into luma.
      process_index / process_count: this host's disjoint contiguous share of the (shuffled) indices.
      drop_remainder: drop the last partial batch (default: pad it; ``valid`` counts the real rows).
      num_workers: threads that read and preprocess source examples (0: in the calling thread).
    """
    if isinstance(data, str):
        if split is None:
            raise UserError("split is required when source is a dataset name")
        data, _ = open_split(data, split, data_dir, image_key=image_key, label_key=label_key)
    arrays = labels is not None
    if batch_size <= 0 or (not arrays and transform is None and (image_size is None or image_size <= 0)):
        raise UserError(f"batch_size and image_size must be positive, got {batch_size}, {image_size}")
    if rng is not None and process_count != 1:
        raise UserError("rng= shuffles for one process; pass shuffle=True and seed= to shard a shuffle")
    pool = np.arange(len(data)) if indices is None else np.asarray(indices, np.int64)
    n = len(pool)
    if rng is not None:
        order = rng.permutation(n)
    else:
        shuffle = train if shuffle is None else shuffle
        order = shard_indices(
            n, process_index, process_count, shuffle_seed=seed if shuffle else None, epoch=epoch
        )
    order = pool[order]
    total = num_batches(n, batch_size, process_count, drop_remainder)
    chunks = [order[b * batch_size : (b + 1) * batch_size] for b in range(total)]
    if arrays:
        return (_array_batch(data, labels, idx, batch_size) for idx in chunks)

    def process(example: dict[str, Any], index: int) -> tuple[np.ndarray, int]:
        image = example[image_key]
        if transform is not None:
            x = transform(image)
        elif train:
            x = transforms.train_preprocess(
                image,
                image_size,
                _example_rng(seed, epoch, index),
                scale=scale,
                ratio=ratio,
                flip=flip,
                channels=channels,
            )
        else:
            x = transforms.eval_preprocess(image, image_size, crop_fraction, channels)
        return x, int(example[label_key])

    def assemble(rows: list[tuple[np.ndarray, int]]) -> Batch:
        valid = len(rows)
        if valid == 0:  # this process's share ran out before the others'
            first = process(_read(data, pool[:1])[0], int(pool[0]))[0]
            return np.zeros((batch_size, *first.shape), np.float32), np.zeros(batch_size, np.int32), 0
        images = np.empty((batch_size, *rows[0][0].shape), np.float32)
        labels = np.empty(batch_size, np.int32)
        for i, (x, y) in enumerate(rows):
            images[i], labels[i] = x, y
        images[valid:], labels[valid:] = images[0], labels[0]  # as the padding of in-memory arrays
        return images, labels, valid

    if num_workers <= 0:
        return (
            assemble([process(ex, i) for ex, i in zip(_read(data, idx), idx, strict=True)]) for idx in chunks
        )
    return _threaded(chunks, lambda i: process(_read(data, [i])[0], i), assemble, num_workers)


def _array_batch(images: np.ndarray, labels: np.ndarray, idx: np.ndarray, batch_size: int) -> Batch:
    """Rows ``idx`` of in-memory arrays, padded to ``batch_size`` by repeating the first row."""
    valid = len(idx)
    if valid == 0:  # this process's share ran out before the others'
        shape = (batch_size, *images.shape[1:])
        return np.zeros(shape, images.dtype), np.zeros(batch_size, labels.dtype), 0
    if valid < batch_size:
        idx = np.concatenate([idx, np.repeat(idx[:1], batch_size - valid)])
    return images[idx], labels[idx], valid


def _threaded(chunks, work, assemble, num_workers: int, ahead: int = 2):
    """Run ``work`` on every index in a thread pool, ``ahead`` batches in advance, yielding in order."""
    pool = ThreadPoolExecutor(num_workers)
    try:
        pending: deque = deque(
            [pool.submit(work, i) for i in chunks[b]] for b in range(min(ahead, len(chunks)))
        )
        for b in range(len(chunks)):
            futures = pending.popleft()
            if b + ahead < len(chunks):
                pending.append([pool.submit(work, i) for i in chunks[b + ahead]])
            yield assemble([f.result() for f in futures])
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# --------------------------------------------------------------------------------------------------
# Reading a selection, streaming, whole splits
# --------------------------------------------------------------------------------------------------


def read(source, indices: Sequence[int] | np.ndarray, config) -> tuple[np.ndarray, np.ndarray]:
    """Decode and preprocess exactly ``indices`` with the model's recipe
    (:func:`~tofu_jax.data.transforms.preprocess`): ``(images float32 [K, S, S, C], labels int32 [K])``."""
    transforms.check_input_norm(config.input_norm)
    examples = _read(source, indices)
    images = np.empty((len(examples), config.image_size, config.image_size, config.channels), np.float32)
    for i, ex in enumerate(examples):
        images[i] = transforms.preprocess(ex["image"], config)
    labels = np.asarray([int(ex["label"]) for ex in examples], np.int32)
    return images, labels


class StreamedImages:
    """An evaluation set decoded batch by batch, each time it is iterated (never all in memory).

    ``batches(batch_size)`` yields ``(images [B, S, S, C], labels [B], valid)`` like
    :func:`batches` (the last batch padded); ``head(k)`` decodes the first ``k``
    images (compile and timing batches). Labels are checked against the model's classes per batch.
    """

    def __init__(self, source, indices: np.ndarray, config, where: str):
        transforms.check_input_norm(config.input_norm)
        self.source, self.indices, self.config, self.where = source, np.asarray(indices), config, where

    def __len__(self) -> int:
        return len(self.indices)

    def head(self, k: int) -> np.ndarray:
        take = np.resize(self.indices, k) if len(self.indices) else self.indices
        images, labels = read(self.source, take, self.config)
        check_labels(labels, self.config.num_classes, self.where)  # before the first compile
        return images

    def batches(self, batch_size: int) -> Iterator[Batch]:
        for images, labels, valid in batches(
            self.source, batch_size=batch_size, indices=self.indices, transform=self._preprocess
        ):
            check_labels(labels, self.config.num_classes, self.where)
            yield images, labels, valid

    def _preprocess(self, image: np.ndarray) -> np.ndarray:
        return transforms.preprocess(image, self.config)


def load_arrays(
    name: str,
    split: str,
    image_size: int | None = None,
    *,
    data_dir: str | Path | None = None,
    crop_fraction: float = 1.0,
    channels: int | None = None,
    batch_size: int = 256,
    num_workers: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """A whole (small) split as ``(images float32 [N, S, S, C] in [-1, 1], labels int32 [N])``.

    ``image_size=None`` keeps the native size of fixed-size datasets (fashion_mnist 28, cifar10 32);
    ``crop_fraction`` defaults to 1.0 (whole image, no border cropped), unlike :func:`batches`.
    """
    source, spec = open_split(name, split, data_dir)
    if image_size is None:
        if not spec.fixed_size or spec.image_shape[0] != spec.image_shape[1]:
            raise DataError(f"{name} images are {spec.image_shape}; pass image_size")
        image_size = int(spec.image_shape[0])
    n = len(source)
    c = channels or spec.channels
    images = np.empty((n, image_size, image_size, c), np.float32)
    labels = np.empty(n, np.int32)
    start = 0
    for x, y, valid in batches(
        source,
        batch_size=batch_size,
        image_size=image_size,
        crop_fraction=crop_fraction,
        channels=channels,
        num_workers=num_workers,
    ):
        images[start : start + valid], labels[start : start + valid] = x[:valid], y[:valid]
        start += valid
    assert start == n, (start, n)
    return images, labels
