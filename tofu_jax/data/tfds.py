"""TFDS input pipelines read without TensorFlow, through TFDS's random-access data sources.

``tfds.data_source`` (``builder.as_data_source``) reads a dataset prepared in the ArrayRecord (or
Parquet) file format and returns examples as NumPy dicts, ``{"image": uint8 [H, W, C], "label": int}``,
so nothing here imports TensorFlow.  Preparing a dataset (``tfds build``) is a separate, one-off step
that usually does need TensorFlow; this module never downloads implicitly.

Image decoding: TFDS stores ``Image`` features as encoded PNG/JPEG bytes, and its NumPy decoder needs
Pillow or OpenCV (``pip install pillow``).  Fixed-size raw tensors and ``tfds.testing.mock_data``
examples arrive already decoded.

Preprocessing is NumPy, per example (images differ in size), with an anti-aliased bilinear (triangle
kernel) resampler that matches ``jax.image.resize(..., "bilinear", antialias=True)``:

* evaluation: resize the shorter side to ``int(image_size / crop_fraction)``, central crop
  ``image_size``, scale to [-1, 1];
* training: Inception-style random-resized crop (area ``scale``, aspect ``ratio``) + horizontal flip,
  drawn from ``np.random.default_rng([seed, epoch, index])``, so an example's augmentation depends only on
  the seed, the epoch and its index, never on batching or on how many processes share the split.

``batches`` yields ``(images float32 [B, S, S, C], labels int32 [B], valid)`` like
:func:`tofu_jax.data.preprocess.batches`: every batch has the same shape, the last partial one is padded
and ``valid`` counts its real rows.  With ``process_count > 1`` each process reads a disjoint contiguous
slice of the (shuffled) index order, and every process yields the same number of batches (a process
whose slice ran out yields fully padded ``valid == 0`` batches) so collective steps stay in lockstep.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from tofu_jax.data.idx import DataError
from tofu_jax.errors import UserError

RANDOM_ACCESS_FORMATS = ("array_record", "parquet")
IMAGENET_SCALE = (0.08, 1.0)
IMAGENET_RATIO = (3.0 / 4.0, 4.0 / 3.0)
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R 601, as PIL's "L" conversion


def _tfds():
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise DataError(
            "TFDS pipelines need tensorflow-datasets (pip install 'tofu_jax[tfds]'); "
            f"TensorFlow itself is not needed ({e})"
        ) from None
    return tfds


# --------------------------------------------------------------------------------------------------
# Dataset metadata and opening a split
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """What the model and the pipeline need to know about a TFDS image-classification dataset."""

    name: str
    num_classes: int
    image_shape: tuple[int | None, int | None, int]  # (H, W, C); None where sizes vary
    splits: Mapping[str, int]  # examples per split; empty when unknown (not prepared, or mocked)
    class_names: tuple[str, ...] | None = dataclasses.field(default=None, repr=False)
    data_dir: str | None = None  # the prepared variant's directory

    @property
    def channels(self) -> int:
        return self.image_shape[-1]

    @property
    def fixed_size(self) -> bool:
        return self.image_shape[0] is not None and self.image_shape[1] is not None


def get_builder(name: str, data_dir: str | Path | None = None):
    """``tfds.builder(name, data_dir=...)`` with TFDS's errors turned into :class:`DataError`."""
    tfds = _tfds()
    try:
        return tfds.builder(name, data_dir=None if data_dir is None else str(data_dir))
    except Exception as e:  # DatasetNotFoundError, bad config/version, unreadable metadata, ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"cannot open TFDS dataset {name!r}: {first}") from None


def _spec_from_builder(name: str, builder, image_key: str = "image", label_key: str = "label") -> DatasetSpec:
    features = builder.info.features
    try:
        image_feature, label_feature = features[image_key], features[label_key]
    except (KeyError, TypeError):
        raise DataError(
            f"{name} has features {list(features.keys())}; expected an image feature {image_key!r} and a "
            f"label feature {label_key!r} (pass image_key= / label_key=)"
        ) from None
    shape = tuple(image_feature.shape)
    if len(shape) == 2:
        shape = (*shape, 1)
    if len(shape) != 3 or shape[-1] not in (1, 3):
        raise DataError(f"{name}: {image_key!r} has shape {shape}, expected (H, W, 1|3) images")
    num_classes = getattr(label_feature, "num_classes", None)
    if num_classes is None:
        raise DataError(f"{name}: {label_key!r} is not a ClassLabel feature")
    names = getattr(label_feature, "names", None)
    splits = {str(k): int(v.num_examples) for k, v in builder.info.splits.items()}
    return DatasetSpec(
        name=name,
        num_classes=int(num_classes),
        image_shape=shape,
        splits=splits,
        class_names=tuple(names) if names else None,
        data_dir=str(builder.data_dir),
    )


def dataset_spec(
    name: str, data_dir: str | Path | None = None, *, image_key: str = "image", label_key: str = "label"
) -> DatasetSpec:
    """Number of classes, image shape and split sizes from the builder info (no data is read)."""
    return _spec_from_builder(name, get_builder(name, data_dir), image_key, label_key)


def _not_prepared_error(name: str, builder, root) -> DataError:
    msg = f"TFDS dataset {name!r} is not prepared in {root} (no {builder.data_dir}). "
    instructions = getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None)
    build = f"tfds build {name} --data_dir={root} --file_format=array_record"
    if instructions:
        manual = Path(root) / "downloads" / "manual"
        first = " ".join(str(instructions).split())
        msg += (
            f"{name} requires a manual download: place the archives in {manual} ({first}) and run "
            f"`{build} --manual_dir={manual}` once (building needs TensorFlow; reading does not)."
        )
    else:
        msg += f"Prepare it once with `{build}` (needs network and TensorFlow; reading does not)."
    return DataError(msg)


_SPLIT_NAME = re.compile(r"^\s*([\w\-]+)\s*([\[(].*)?$")


def _check_split(name: str, split: str, builder) -> None:
    known = builder.info.splits
    if not known:  # not prepared or mocked: TFDS decides below
        return
    for part in str(split).split("+"):
        m = _SPLIT_NAME.match(part)
        if m is None:
            raise DataError(f"{name}: cannot parse split {split!r} (e.g. 'train', 'train[:10%]')")
        if m.group(1) not in known:
            raise DataError(f"{name} has no split {m.group(1)!r}; available splits: {sorted(known)}")


def open_split(
    name: str,
    split: str,
    data_dir: str | Path | None = None,
    *,
    download: bool = False,
    image_key: str = "image",
    label_key: str = "label",
) -> tuple[Sequence[dict[str, Any]], DatasetSpec]:
    """Random-access source of one split (same as ``tfds.data_source(name, split=..., data_dir=...)``).

    Args:
      name: TFDS name, optionally with config/version (``"imagenette/320px-v2"``, ``"cifar10:3.0.2"``).
      split: TFDS split string, slicing allowed (``"validation"``, ``"train[:10%]"``).
      data_dir: TFDS data directory (default: ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).
      download: prepare the dataset (ArrayRecord format) when missing; usually needs TensorFlow.

    Returns:
      ``(source, spec)``: ``source[i]`` is ``{"image": uint8 [H, W, C], "label": int, ...}``.
    """
    builder = get_builder(name, data_dir)
    spec = _spec_from_builder(name, builder, image_key, label_key)
    if download and not builder.is_prepared():
        try:
            builder.download_and_prepare(file_format="array_record")
        except Exception as e:
            raise DataError(f"preparing TFDS dataset {name!r} failed: {type(e).__name__}: {e}") from None
        builder = get_builder(name, data_dir)
        spec = _spec_from_builder(name, builder, image_key, label_key)
    _check_split(name, split, builder)
    try:
        source = builder.as_data_source(split=split)
    except Exception as e:
        root = Path(data_dir) if data_dir is not None else builder.data_dir_root
        if not builder.is_prepared():
            raise _not_prepared_error(name, builder, root) from None
        fmt = getattr(getattr(builder.info, "file_format", None), "value", None)
        if fmt is not None and fmt not in RANDOM_ACCESS_FORMATS:
            raise DataError(
                f"TFDS dataset {name!r} is prepared at {builder.data_dir} in the {fmt} format, which has no "
                f"random access; rebuild it with `tfds build {name} --data_dir={root} "
                "--file_format=array_record` (into another data_dir, or after deleting that one)"
            ) from None
        raise DataError(f"cannot read split {split!r} of {name!r}: {type(e).__name__}: {e}") from None
    return source, spec


# --------------------------------------------------------------------------------------------------
# Resampling and per-example preprocessing (NumPy)
# --------------------------------------------------------------------------------------------------


INTERPOLATIONS = ("bilinear", "bicubic")


def _kernel(x: np.ndarray, interpolation: str) -> np.ndarray:
    """Resampling kernel at distances ``x >= 0``: triangle, or Keys cubic with a = -0.5 (PIL's)."""
    if interpolation == "bilinear":
        return np.maximum(0.0, 1.0 - x)
    a = -0.5
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x < 1, near, np.where(x < 2, far, 0.0))


def _axis_weights(
    n: int, start: float, length: float, out: int, interpolation: str = "bilinear", antialias: bool = True
) -> tuple[np.ndarray, int, int]:
    """Kernel weights mapping source pixels ``[lo, hi)`` of an axis onto ``out`` samples.

    The window ``[start, start + length)`` (source pixel units, may be fractional) is resampled to
    ``out`` pixels with half-pixel centres. With ``antialias`` the kernel widens by ``length / out``
    when shrinking, as in PIL (what timm, torchvision and Hugging Face feed their models) and
    ``jax.image.scale_and_translate``; without it, as TensorFlow's ``tf.image.resize`` (big_vision).
    Source pixels outside the image are dropped and the weights renormalised (edge clamping for the
    triangle). Returns ``(w [out, hi - lo], lo, hi)``.
    """
    if interpolation not in INTERPOLATIONS:
        raise UserError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {interpolation!r}")
    inv_scale = length / out
    kernel_scale = max(inv_scale, 1.0) if antialias else 1.0
    support = kernel_scale * (1 if interpolation == "bilinear" else 2)
    centres = start + (np.arange(out, dtype=np.float64) + 0.5) * inv_scale - 0.5
    lo = min(max(int(math.floor(centres[0] - support)), 0), n - 1)
    hi = max(min(int(math.ceil(centres[-1] + support)) + 1, n), lo + 1)
    x = np.abs(centres[:, None] - np.arange(lo, hi, dtype=np.float64)[None, :]) / kernel_scale
    w = _kernel(x, interpolation)
    total = w.sum(axis=1, keepdims=True)
    w = np.where(total > 1e-12, w / np.where(total > 0, total, 1.0), 0.0)
    return w.astype(np.float32), lo, hi


def crop_and_resize(
    image: np.ndarray,
    box: tuple[float, float, float, float],
    size: int,
    *,
    interpolation: str = "bilinear",
    antialias: bool = True,
) -> np.ndarray:
    """Resample the window ``box = (top, left, height, width)`` of ``image`` to ``size x size``.

    Args:
      image: ``[H, W, C]`` (any real dtype).  Returns float32 ``[size, size, C]`` in the input's scale.
      interpolation / antialias: as in :func:`_axis_weights`.
    """
    h, w, c = image.shape
    top, left, bh, bw = box
    wy, y0, y1 = _axis_weights(h, top, bh, size, interpolation, antialias)
    wx, x0, x1 = _axis_weights(w, left, bw, size, interpolation, antialias)
    x = np.asarray(image[y0:y1, x0:x1], np.float32)
    hs, ws = x.shape[:2]
    if size * hs * ws + size * ws * size <= hs * ws * size + size * hs * size:  # rows first
        t = (wy @ x.reshape(hs, ws * c)).reshape(size, ws, c)  # [S, ws, C]
        return (t.transpose(0, 2, 1) @ wx.T).transpose(0, 2, 1)
    t = (x.transpose(0, 2, 1) @ wx.T).transpose(0, 2, 1)  # [hs, S, C]
    return (wy @ t.reshape(hs, size * c)).reshape(size, size, c)


def resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Whole-image anti-aliased bilinear resize to ``[height, width, C]`` float32."""
    h, w, c = image.shape
    wy, y0, y1 = _axis_weights(h, 0.0, float(h), height)
    wx, x0, x1 = _axis_weights(w, 0.0, float(w), width)
    x = np.asarray(image[y0:y1, x0:x1], np.float32)
    t = (wy @ x.reshape(y1 - y0, -1)).reshape(height, x1 - x0, c)
    return (t.transpose(0, 2, 1) @ wx.T).transpose(0, 2, 1)


def _as_hwc(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
        raise DataError(f"expected an [H, W, C] image with C in (1, 3), got shape {image.shape}")
    return image[..., :3] if image.shape[-1] == 4 else image


def _finish(x: np.ndarray, channels: int | None) -> np.ndarray:
    """float [0, 255] -> [-1, 1], then match ``channels`` (None: keep)."""
    x = np.clip(np.asarray(x, np.float32) * np.float32(1 / 127.5) - np.float32(1.0), -1.0, 1.0)
    c = x.shape[-1]
    if channels is None or channels == c:
        return x
    if channels == 3 and c == 1:
        return np.repeat(x, 3, axis=-1)
    if channels == 1 and c == 3:
        return (x @ _LUMA)[..., None]
    raise UserError(f"channels must be None, 1 or 3, got {channels}")


RESIZE_MODES = ("shorter", "square")


def eval_box(
    h: int, w: int, image_size: int, crop_fraction: float = 0.875, mode: str = "shorter"
) -> tuple[float, ...]:
    """Source window of "resize to ``int(image_size / crop_fraction)``, central crop ``image_size``".

    ``mode="shorter"`` resizes the shorter side and keeps the aspect ratio, the longer side going to
    ``int(long * resize / short)`` (torchvision's rule, used by timm); ``"square"`` resizes both sides
    (Hugging Face image processors, big_vision). The crop offset is ``round((resized - image_size) / 2)``;
    the window is expressed in source pixels so one resampling pass does both steps.
    """
    if not 0.0 < crop_fraction <= 1.0:
        raise UserError(f"crop_fraction must be in (0, 1], got {crop_fraction}")
    if mode not in RESIZE_MODES:
        raise UserError(f"resize mode must be one of {', '.join(RESIZE_MODES)}, got {mode!r}")
    target = max(int(image_size / crop_fraction + 1e-6), image_size)
    if mode == "square":
        rh = rw = target
    elif h <= w:
        rh, rw = target, max(int(w * target / h), image_size)
    else:
        rh, rw = max(int(h * target / w), image_size), target
    sy, sx = rh / h, rw / w
    top, left = round((rh - image_size) / 2.0), round((rw - image_size) / 2.0)
    return top / sy, left / sx, image_size / sy, image_size / sx


def eval_preprocess(
    image: np.ndarray, image_size: int, crop_fraction: float = 0.875, channels: int | None = None
) -> np.ndarray:
    """uint8 ``[H, W, C]`` -> float32 ``[image_size, image_size, C']`` in [-1, 1] (resize + central crop)."""
    image = _as_hwc(image)
    h, w = image.shape[:2]
    if (h, w) == (image_size, image_size) and crop_fraction == 1.0:
        x = image.astype(np.float32)
    else:
        x = crop_and_resize(image, eval_box(h, w, image_size, crop_fraction), image_size)
    return _finish(x, channels)


def random_resized_box(
    h: int,
    w: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = IMAGENET_SCALE,
    ratio: tuple[float, float] = IMAGENET_RATIO,
    attempts: int = 10,
) -> tuple[int, int, int, int]:
    """Inception-style crop window ``(top, left, height, width)`` (torchvision's RandomResizedCrop).

    Area fraction ~ U(scale), log aspect ratio ~ U(log ratio); after ``attempts`` misses, the largest
    central window whose aspect ratio lies in ``ratio``.
    """
    area = h * w
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(attempts):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        cw = int(round(math.sqrt(target * aspect)))
        ch = int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
    in_ratio = w / h
    if in_ratio < min(ratio):
        cw, ch = w, int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        ch, cw = h, int(round(h * max(ratio)))
    else:
        ch, cw = h, w
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def train_preprocess(
    image: np.ndarray,
    image_size: int,
    rng: np.random.Generator,
    *,
    scale: tuple[float, float] = IMAGENET_SCALE,
    ratio: tuple[float, float] = IMAGENET_RATIO,
    flip: bool = True,
    channels: int | None = None,
) -> np.ndarray:
    """Random-resized crop to ``image_size`` + horizontal flip; float32 in [-1, 1]."""
    image = _as_hwc(image)
    h, w = image.shape[:2]
    box = random_resized_box(h, w, rng, scale, ratio)
    x = crop_and_resize(image, box, image_size)
    if flip and rng.random() < 0.5:
        x = x[:, ::-1]
    return _finish(x, channels)


# --------------------------------------------------------------------------------------------------
# Index order, sharding and batching
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
    source: str | Sequence[dict[str, Any]],
    split: str | None = None,
    *,
    batch_size: int,
    image_size: int,
    train: bool = False,
    seed: int = 0,
    epoch: int = 0,
    shuffle: bool | None = None,
    crop_fraction: float = 0.875,
    scale: tuple[float, float] = IMAGENET_SCALE,
    ratio: tuple[float, float] = IMAGENET_RATIO,
    flip: bool = True,
    channels: int | None = None,
    process_index: int = 0,
    process_count: int = 1,
    drop_remainder: bool = False,
    data_dir: str | Path | None = None,
    num_workers: int = 0,
    image_key: str = "image",
    label_key: str = "label",
) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
    """One epoch of fixed-size batches ``(images float32 [B, S, S, C], labels int32 [B], valid)``.

    The dataset is opened and the arguments checked when this is called (errors surface here, not at
    the first ``next``); examples are read and preprocessed lazily, batch by batch.

    Args:
      source: a TFDS name (then ``split`` is required) or an already opened random-access source.
      batch_size: per-process batch size.
      train: random-resized crop + flip (else resize + central crop with ``crop_fraction``).
      seed / epoch: drive the shuffle (``default_rng([seed, epoch])``) and the per-example augmentation.
      shuffle: defaults to ``train``.
      channels: None keeps the dataset's channels; 3 turns grayscale into RGB, 1 RGB into luma.
      process_index / process_count: this host's disjoint contiguous share of the (shuffled) indices.
      drop_remainder: drop the last partial batch (default: pad it; ``valid`` counts the real rows).
      num_workers: threads that read and preprocess examples (0: in the calling thread).
    """
    if isinstance(source, str):
        if split is None:
            raise UserError("split is required when source is a dataset name")
        source, _ = open_split(source, split, data_dir, image_key=image_key, label_key=label_key)
    if batch_size <= 0 or image_size <= 0:
        raise UserError(f"batch_size and image_size must be positive, got {batch_size}, {image_size}")
    shuffle = train if shuffle is None else shuffle
    n = len(source)
    indices = shard_indices(
        n, process_index, process_count, shuffle_seed=seed if shuffle else None, epoch=epoch
    )
    total = num_batches(n, batch_size, process_count, drop_remainder)

    def process(example: dict[str, Any], index: int) -> tuple[np.ndarray, int]:
        image = example[image_key]
        if train:
            rng = _example_rng(seed, epoch, index)
            x = train_preprocess(
                image, image_size, rng, scale=scale, ratio=ratio, flip=flip, channels=channels
            )
        else:
            x = eval_preprocess(image, image_size, crop_fraction, channels)
        return x, int(example[label_key])

    def assemble(rows: list[tuple[np.ndarray, int]]) -> tuple[np.ndarray, np.ndarray, int]:
        valid = len(rows)
        if valid == 0:  # this process's share ran out before the others'
            c = channels or _as_hwc(source[0][image_key]).shape[-1]
            images = np.zeros((batch_size, image_size, image_size, c), np.float32)
            return images, np.zeros(batch_size, np.int32), 0
        images = np.empty((batch_size, *rows[0][0].shape), np.float32)
        labels = np.empty(batch_size, np.int32)
        for i, (x, y) in enumerate(rows):
            images[i], labels[i] = x, y
        images[valid:], labels[valid:] = images[0], labels[0]  # like preprocess.batches
        return images, labels, valid

    chunks = [indices[b * batch_size : (b + 1) * batch_size] for b in range(total)]
    if num_workers <= 0:
        return (
            assemble([process(ex, i) for ex, i in zip(_read(source, idx), idx, strict=True)])
            for idx in chunks
        )
    return _threaded(chunks, lambda i: process(_read(source, [i])[0], i), assemble, num_workers)


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
    ``crop_fraction`` defaults to 1.0 (whole image, no border cropped) unlike :func:`batches`.
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
