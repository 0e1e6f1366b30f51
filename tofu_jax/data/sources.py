"""Opening data sources: TFDS datasets, image folders, and which split to evaluate on.

A *source* is random access, ``len(source)`` and ``source[i] -> {"image": uint8 [H, W, C], "label": int}``:
a TFDS data source (:func:`open_split`) or an :class:`ImageFolder`; nothing is decoded until it is read.
Fashion-MNIST IDX files (:data:`IDX_DATASET`) are small arrays read whole by :mod:`tofu_jax.data.idx`.
Every problem with the data itself raises :class:`~tofu_jax.errors.DataError`.

TFDS datasets are read without TensorFlow, through TFDS's random-access data sources:
``tfds.data_source`` (``builder.as_data_source``) reads a dataset prepared in the ArrayRecord (or
Parquet) file format and returns examples as NumPy dicts. Preparing a dataset (``tfds build``) is a
separate, one-off step that usually does need TensorFlow; nothing here downloads implicitly.

Image decoding: TFDS stores ``Image`` features as encoded PNG/JPEG bytes, and its NumPy decoder needs
Pillow or OpenCV (``pip install pillow``).  Fixed-size raw tensors and ``tfds.testing.mock_data``
examples arrive already decoded.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tofu_jax.errors import DataError, UserError

IDX_DATASET = "fashion_mnist_idx"
IMAGE_FOLDER = "imagefolder"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
RANDOM_ACCESS_FORMATS = ("array_record", "parquet")


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
# TFDS: dataset metadata and opening a split
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
# Image folders and choosing a source
# --------------------------------------------------------------------------------------------------


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
    source, spec = open_split(dataset, split, data_dir)
    return source, spec.num_classes


def eval_split_name(dataset: str, split: str | None = None, data_dir: str | Path | None = None) -> str:
    """The split to evaluate on: ``split`` when given, else the dataset's test split, else its
    validation split (``validation`` for TFDS, ``validation`` or ``val`` for image folders)."""
    if split:
        return split
    if dataset == IDX_DATASET:
        return "test"
    if dataset == IMAGE_FOLDER:
        root = Path(data_dir or ".")
        return next((s for s in ("test", "validation", "val") if (root / s).is_dir()), "test")
    splits = dataset_spec(dataset, data_dir).splits
    return "validation" if "test" not in splits and "validation" in splits else "test"


# --------------------------------------------------------------------------------------------------
# What a source holds against the model
# --------------------------------------------------------------------------------------------------


def check_class_count(num_classes: int, model_classes: int, where: str) -> None:
    """Before any compile: a dataset with more classes than the model's head cannot be scored."""
    if num_classes > model_classes:
        raise UserError(
            f"{where} has {num_classes} classes but the model has {model_classes}; pass "
            "--num-classes N --reset-head to train a new head, or evaluate on a dataset with the "
            "model's classes"
        )


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
