"""Evaluation and calibration images read on demand: TFDS splits and image folders, one preprocessing.

A *source* is random access, ``len(source)`` and ``source[i] -> {"image": uint8 [H, W, C], "label": int}``:
a TFDS data source (:func:`tofu_jax.data.tfds.open_split`) or an :class:`ImageFolder`. Nothing reads a
whole split: :func:`read` decodes exactly the indices it is given, and :class:`StreamedImages` decodes
one batch at a time each time it is iterated.

Every image goes through :func:`preprocess`, the model's own recipe (``ViTConfig`` fields ``resize``,
``crop_pct``, ``interpolation``, ``antialias``, ``input_norm``, which ``--model auto`` takes from the
checkpoint's family): resize to ``int(image_size / crop_pct)`` (shorter side or both sides), crop the
centre, scale to [-1, 1], then the model's mean/std.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tofu_jax.data import tfds as tfds_data
from tofu_jax.data.idx import DataError
from tofu_jax.data.preprocess import check_input_norm, renormalize
from tofu_jax.errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
IMAGE_FOLDER = "imagefolder"


def preprocess(image: np.ndarray, config) -> np.ndarray:
    """One decoded image ``uint8 [H, W, C]`` -> ``float32 [S, S, config.channels]`` as the model expects.

    Args:
      image: ``[H, W]`` or ``[H, W, 1|3|4]`` pixels in 0..255 (alpha dropped).
      config: a :class:`~tofu_jax.models.vit.ViTConfig` (its size, channels and preprocessing fields).
    """
    image = tfds_data._as_hwc(image)
    h, w = image.shape[:2]
    size = config.image_size
    if (h, w) == (size, size) and config.crop_pct == 1.0:
        x = image.astype(np.float32)
    else:
        box = tfds_data.eval_box(h, w, size, config.crop_pct, config.resize)
        x = tfds_data.crop_and_resize(
            image, box, size, interpolation=config.interpolation, antialias=config.antialias
        )
    x = tfds_data._finish(x, config.channels)
    return renormalize(x[None], config.input_norm)[0]


class ImageFolder:
    """``root/<class>/<image>`` (torchvision's ImageFolder convention) as a random-access source.

    Classes are the sub-folders in sorted order (label = position), images the ``.jpg``/``.jpeg``/
    ``.png`` files in each, sorted; nothing is decoded until it is read.
    """

    def __init__(self, root: str | Path):
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"image folder {root} does not exist or is not a directory")
        self.root = root
        self.classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        self.files: list[tuple[Path, int]] = []
        for label, name in enumerate(self.classes):
            found = sorted(p for p in (root / name).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            self.files.extend((p, label) for p in found)
        if not self.files:
            raise DataError(
                f"image folder {root} holds no images: expected {root}/<class>/<image> with "
                f"{', '.join(IMAGE_SUFFIXES)} files (one sub-folder per class)"
            )

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path, label = self.files[index]
        return {"image": decode(path), "label": label}


def decode(path: Path) -> np.ndarray:
    """A JPEG/PNG file -> ``uint8 [H, W, 1|3]``."""
    try:
        from PIL import Image
    except ImportError:
        raise DataError("reading image files needs Pillow (pip install pillow)") from None
    try:
        with Image.open(path) as im:
            im = im.convert("L" if im.mode in ("1", "L", "I;16", "I") else "RGB")
            return np.asarray(im)
    except (OSError, SyntaxError, ValueError) as e:  # missing, not an image, damaged
        raise DataError(f"cannot read image {path}: {e}") from None


def open_source(dataset: str, split: str, data_dir: str | Path | None) -> tuple[Sequence[dict], int]:
    """``(source, num_classes)`` for ``--dataset`` / ``--split`` / ``--data-dir``.

    ``imagefolder``: ``data_dir/<split>/<class>/<image>``; anything else is a TFDS name, with TFDS's
    split syntax (``validation``, ``train[:1%]``).
    """
    if dataset == IMAGE_FOLDER:
        if data_dir is None:
            raise UserError("--dataset imagefolder needs --data-dir ROOT (images in ROOT/<split>/<class>/)")
        folder = ImageFolder(Path(data_dir) / split)
        return folder, len(folder.classes)
    source, spec = tfds_data.open_split(dataset, split, data_dir)
    return source, spec.num_classes


def subset(n: int, limit: int | None, *, seed: int, offset: int = 0) -> np.ndarray:
    """Sorted indices ``[k]`` of a seeded draw of ``limit`` out of ``n`` (all of them when ``limit``
    is None or 0), skipping the first ``offset`` of the draw (disjoint calibration and search sets)."""
    if not limit:
        return np.arange(n)
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[offset : offset + limit])


def check_labels(labels: np.ndarray, num_classes: int, where: str) -> None:
    """Refuse labels outside ``0..num_classes-1`` (-1 marks an unlabelled split) before accuracy."""
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise UserError(
            f"{where} has labels {labels.min()}..{labels.max()} but the model has {num_classes} classes "
            "(labels of -1 mean an unlabelled split, e.g. imagenet2012's test split: evaluate on "
            "--split validation); pick a labelled split, or pass --num-classes N --reset-head to train "
            "a new head"
        )


def read(source, indices: np.ndarray, config) -> tuple[np.ndarray, np.ndarray]:
    """Decode and preprocess exactly ``indices``: ``(images float32 [K, S, S, C], labels int32 [K])``."""
    check_input_norm(config.input_norm)
    examples = tfds_data._read(source, indices)
    images = np.empty((len(examples), config.image_size, config.image_size, config.channels), np.float32)
    for i, ex in enumerate(examples):
        images[i] = preprocess(ex["image"], config)
    labels = np.asarray([int(ex["label"]) for ex in examples], np.int32)
    return images, labels


class StreamedImages:
    """An evaluation set decoded batch by batch, each time it is iterated (never all in memory).

    ``batches(batch_size)`` yields ``(images [B, S, S, C], labels [B], valid)`` like
    :func:`tofu_jax.data.preprocess.batches` (the last batch padded); ``head(k)`` decodes the first ``k``
    images (compile and timing batches). Labels are checked against the model's classes per batch.
    """

    def __init__(self, source, indices: np.ndarray, config, where: str):
        check_input_norm(config.input_norm)
        self.source, self.indices, self.config, self.where = source, np.asarray(indices), config, where

    def __len__(self) -> int:
        return len(self.indices)

    def head(self, k: int) -> np.ndarray:
        take = np.resize(self.indices, k) if len(self.indices) else self.indices
        images, labels = read(self.source, take, self.config)
        check_labels(labels, self.config.num_classes, self.where)  # before the first compile
        return images

    def batches(self, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
        for start in range(0, len(self.indices), batch_size):
            idx = self.indices[start : start + batch_size]
            images, labels = read(self.source, idx, self.config)
            check_labels(labels, self.config.num_classes, self.where)
            valid = len(idx)
            if valid < batch_size:  # same shape for every batch: one compiled program
                pad = batch_size - valid
                images = np.concatenate([images, np.repeat(images[:1], pad, axis=0)])
                labels = np.concatenate([labels, np.repeat(labels[:1], pad)])
            yield images, labels, valid
