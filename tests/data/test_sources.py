"""Opening sources: TFDS builder metadata, splits and the errors of unprepared datasets (mocked named
datasets plus a tiny real ArrayRecord dataset), image folders, the evaluation split's name, and the
class-count check."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tofu_jax.data import sources as S
from tofu_jax.errors import DataError, UserError

from .conftest import MOCKED, photo

# --------------------------------------------------------------------------------------------------
# TFDS: builder metadata and opening a split
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(MOCKED))
def test_spec_from_builder_info(name, mock10):
    _, size, channels, num_classes = MOCKED[name]
    spec = S.dataset_spec(name)
    assert spec.num_classes == num_classes and spec.channels == channels
    if name in ("fashion_mnist", "cifar10"):
        assert spec.image_shape == (size, size, channels) and spec.fixed_size
    else:
        assert spec.image_shape == (None, None, 3) and not spec.fixed_size


def test_real_array_record_source(tiny_dir):
    spec = S.dataset_spec("tofu_tiny_images", tiny_dir)
    assert spec.num_classes == 5 and spec.splits == {"train": 13, "test": 5}
    src, _ = S.open_split("tofu_tiny_images", "train", tiny_dir)
    assert len(src) == 13 and src[0]["image"].dtype == np.uint8
    assert len(S.open_split("tofu_tiny_images", "train[:5]+test", tiny_dir)[0]) == 10


@pytest.mark.parametrize(
    "split,match",
    [("validation", "no split 'validation'"), ("train[", r"cannot read split .train\[.*Error parsing split")],
)
def test_unknown_split(tiny_dir, split, match):
    with pytest.raises(DataError, match=match) as e:
        S.open_split("tofu_tiny_images", split, tiny_dir)
    if "no split" in match:
        assert "['test', 'train']" in str(e.value)


def test_tfrecord_prepared_dataset_is_explained(tiny_dir, tmp_path):
    import shutil

    shutil.copytree(tiny_dir / "tofu_tiny_images", tmp_path / "tofu_tiny_images")
    info = tmp_path / "tofu_tiny_images" / "1.0.0" / "dataset_info.json"
    meta = json.loads(info.read_text())
    meta["fileFormat"] = "tfrecord"
    info.write_text(json.dumps(meta))
    with pytest.raises(DataError, match="tfrecord format.*--file_format=array_record"):
        S.open_split("tofu_tiny_images", "train", tmp_path)


def test_not_prepared_errors(tmp_path, tfds):
    with pytest.raises(DataError, match="manual download") as e:
        S.open_split("imagenet2012", "validation", tmp_path)
    assert str(tmp_path / "downloads" / "manual") in str(e.value)
    assert "ILSVRC2012_img_val.tar" in str(e.value)
    with pytest.raises(DataError, match=r"not prepared.*tfds build cifar10"):
        S.open_split("cifar10", "test", tmp_path)
    with pytest.raises(DataError, match="no_such_dataset"):
        S.open_split("no_such_dataset", "train", tmp_path)


# --------------------------------------------------------------------------------------------------
# Image folders
# --------------------------------------------------------------------------------------------------


def _folder(pil, root, counts=(3, 2)):
    for c, n in enumerate(counts):
        d = root / "val" / f"class_{c}"
        d.mkdir(parents=True)
        for k in range(n):
            suffix = ".png" if k % 2 else ".JPEG"
            pil.fromarray(photo(20 + k, 30, seed=k)).save(d / f"im{k}{suffix}")
    (root / "val" / "class_0" / "notes.txt").write_text("not an image")
    return root


def test_image_folder_lists_classes_and_decodes_lazily(tmp_path, pil):
    source, num_classes = S.open_source("imagefolder", "val", _folder(pil, tmp_path))
    assert num_classes == 2 and len(source) == 5 and source.classes == ["class_0", "class_1"]
    assert [label for _, label in source.files] == [0, 0, 0, 1, 1]
    ex = source[4]
    assert ex["image"].shape == (21, 30, 3) and ex["image"].dtype == np.uint8 and ex["label"] == 1


@pytest.mark.parametrize(
    "make,needle",
    [
        (lambda p: p, "does not exist"),
        (lambda p: (p / "val").mkdir() or p, "holds no images"),
    ],
)
def test_image_folder_errors(tmp_path, make, needle):
    with pytest.raises(DataError, match=needle):
        S.open_source(
            "imagefolder", "val", make(tmp_path / "root" if needle == "does not exist" else tmp_path)
        )


def test_image_folder_needs_data_dir_and_names_broken_files(tmp_path, pil):
    with pytest.raises(UserError, match="needs --data-dir ROOT"):
        S.open_source("imagefolder", "val", None)
    bad = tmp_path / "val" / "a"
    bad.mkdir(parents=True)
    (bad / "broken.png").write_bytes(b"\x89PNG not really")
    source, _ = S.open_source("imagefolder", "val", tmp_path)
    with pytest.raises(DataError, match="cannot read image .*broken.png"):
        source[0]


# --------------------------------------------------------------------------------------------------
# The evaluation split; classes and labels against the model
# --------------------------------------------------------------------------------------------------


def test_eval_split_name(tmp_path, tiny_dir):
    assert S.eval_split_name("tofu_tiny_images", "train[:3]", tiny_dir) == "train[:3]"  # as written
    assert S.eval_split_name("tofu_tiny_images", None, tiny_dir) == "test"
    assert S.eval_split_name(S.IDX_DATASET) == "test"
    assert S.eval_split_name(S.IMAGE_FOLDER, None, tmp_path) == "test"  # no folder: the default
    (tmp_path / "val").mkdir()
    assert S.eval_split_name(S.IMAGE_FOLDER, None, tmp_path) == "val"
    (tmp_path / "validation").mkdir()
    assert S.eval_split_name(S.IMAGE_FOLDER, None, tmp_path) == "validation"


def test_class_count_and_labels_against_the_model():
    S.check_class_count(10, 10, "the test split of x")
    with pytest.raises(UserError, match="the test split of x has 11 classes but the model has 10; pass"):
        S.check_class_count(11, 10, "the test split of x")
    S.check_labels(np.array([0, 9]), 10, "x")
    S.check_labels(np.array([], np.int32), 10, "x")
    with pytest.raises(UserError, match=r"x has labels 0\.\.10 but the model has 10 classes"):
        S.check_labels(np.array([0, 10]), 10, "x")
