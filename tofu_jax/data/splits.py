"""Opening data for a model: a split preprocessed for it, the evaluation set, one image.

These are the data steps of the ``tofu-jax`` commands and of the experiment scripts, as functions of
the dataset name (``fashion_mnist_idx``, ``imagefolder`` or a TFDS name), the split and the model's
:class:`~tofu_jax.models.vit.ViTConfig`. Images come back as the model takes them, ``float32
[N, S, S, C]`` with ``S = config.image_size`` and ``C = config.channels``, resized, cropped and
normalised by the model's own recipe; labels as ``int32 [N]``.

Draws are seeded: ``limit`` images of ``split`` are a seeded permutation's first ``limit`` (after
``offset``), and only those are decoded. The draw of the calibration split uses ``seed + 1``
(``seed + (split == calib_split)``), so calibration images differ from an evaluation draw at the same
seed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tofu_jax.data import idx
from tofu_jax.data.batching import StreamedImages, read, subset
from tofu_jax.data.sources import (
    IDX_DATASET,
    check_class_count,
    check_labels,
    decode,
    eval_split_name,
    open_source,
)
from tofu_jax.data.transforms import (
    check_input_norm,
    preprocess,
    renormalize,
    resize_nearest_area,
    to_model_range,
)
from tofu_jax.errors import UserError


def load_split(
    dataset: str,
    split: str,
    config,
    *,
    data_dir: str | Path | None = None,
    limit: int | None = None,
    offset: int = 0,
    seed: int = 0,
    calib_split: str = "train",
    labelled: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """``(images float32 [N, S, S, C], labels int32 [N])`` of ``split``, preprocessed for the model.

    Args:
      dataset: ``fashion_mnist_idx`` (IDX files in ``data_dir``), ``imagefolder``
        (``data_dir/<split>/<class>/<image>``) or a TFDS name (``split`` in TFDS syntax).
      split: the split to read, e.g. ``"train"``, ``"validation"``, ``"train[:10%]"``.
      config: the model's :class:`~tofu_jax.models.vit.ViTConfig` (size, channels, recipe).
      limit: images to draw (0/None: all); ``offset`` skips the first of the draw.
      seed: the draw's seed, plus one when ``split == calib_split``.
      labelled: refuse classes and labels the model cannot score (-1 of unlabelled splits).
    """
    check_input_norm(config.input_norm)  # before reading anything
    seed = seed + (split == calib_split)
    where = f"the {split} split of {dataset}"
    if dataset == IDX_DATASET:
        images, labels = _read_idx(split, config, data_dir, limit, offset, seed)
    else:
        source, num_classes = open_source(dataset, split, data_dir)
        if labelled:
            check_class_count(num_classes, config.num_classes, where)
        sel = subset(len(source), limit, seed=seed, offset=offset)
        images, labels = read(source, sel, config)
    if labelled:
        check_labels(labels, config.num_classes, where)
    return images, labels


def _read_idx(split: str, config, data_dir, limit, offset: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    images, labels = idx.load_split(split, data_dir)
    sel = subset(len(images), limit, seed=seed, offset=offset)
    images, labels = to_model_range(images[sel]), labels[sel]  # subsample first: resizing costs
    if images.shape[-1] != config.channels:
        images = np.repeat(images, config.channels, axis=-1)
    return renormalize(resize_nearest_area(images, config.image_size), config.input_norm), labels


def open_eval_set(
    dataset: str,
    split: str | None,
    config,
    *,
    data_dir: str | Path | None = None,
    limit: int | None = None,
    seed: int = 0,
    calib_split: str = "train",
) -> tuple[np.ndarray, np.ndarray] | tuple[StreamedImages, None]:
    """The evaluation set (``split``, else :func:`~tofu_jax.data.sources.eval_split_name`'s choice).

    IDX files: ``(images float32 [N, S, S, C], labels int32 [N])`` in memory, as :func:`load_split`.
    Other datasets: a :class:`~tofu_jax.data.batching.StreamedImages` of a seeded draw of ``limit``
    images (0/None: all) and ``None``, decoded batch by batch; the class count is checked here.
    """
    split = eval_split_name(dataset, split, data_dir)
    if dataset == IDX_DATASET:
        return load_split(
            dataset, split, config, data_dir=data_dir, limit=limit, seed=seed, calib_split=calib_split
        )
    source, num_classes = open_source(dataset, split, data_dir)
    where = f"the {split} split of {dataset}"
    check_class_count(num_classes, config.num_classes, where)
    sel = subset(len(source), limit, seed=seed)
    return StreamedImages(source, sel, config, where), None


def read_image(
    dataset: str, split: str | None, config, index: int, *, data_dir: str | Path | None = None
) -> np.ndarray:
    """Image ``index`` of ``split`` (else the evaluation split), ``float32 [S, S, C]`` preprocessed for
    the model; only that image is decoded (IDX files are read whole)."""
    split = eval_split_name(dataset, split, data_dir)
    if dataset == IDX_DATASET:
        images, _ = load_split(dataset, split, config, data_dir=data_dir, labelled=False)
        size, image = len(images), images[index] if 0 <= index < len(images) else None
    else:
        source, _ = open_source(dataset, split, data_dir)
        size = len(source)
        image = read(source, [index], config)[0][0] if 0 <= index < size else None
    if image is None:
        raise UserError(f"--index {index} out of range 0..{size - 1}")
    return image


def read_image_file(path: str | Path, config) -> np.ndarray:
    """A JPEG/PNG file of any size -> ``float32 [S, S, C]``, the model's own resize, crop and
    normalisation."""
    return preprocess(decode(Path(path)), config)
