"""The public open-data functions (``tofu_jax.data``): seeded draws of a split preprocessed for the model,
the evaluation set, one image; on IDX files, a real ArrayRecord dataset and image files."""

from __future__ import annotations

import numpy as np
import pytest

from tofu_jax import data
from tofu_jax.data import batching, idx, transforms
from tofu_jax.errors import UserError
from tofu_jax.models.vit import ViTConfig

from ..helpers import write_fashion_idx
from .conftest import TINY, photo

IDX_CONFIG = ViTConfig(image_size=16, **{**TINY, "num_classes": 10}, channels=3, input_norm="imagenet")


def test_splits_take_tfds_syntax_and_read_only_their_draw(tiny_dir, monkeypatch):
    """A split ``test[:60%]`` / calibration split ``train[:10]`` reach TFDS as written; a calibration
    draw decodes only its images, the evaluation set one batch at a time."""
    config = ViTConfig(image_size=16, patch_size=8, width=16, depth=1, mlp_dim=32, num_heads=2,
                       num_classes=5, input_norm="inception")  # fmt: skip
    kw = dict(data_dir=tiny_dir, seed=0, calib_split="train[:10]")
    decoded = []
    monkeypatch.setattr(transforms, "preprocess", lambda im, c: decoded.append(1) or np.zeros((16, 16, 3)))
    images, labels = data.load_split("tofu_tiny_images", "train[:10]", config, limit=4, **kw)
    assert images.shape == (4, 16, 16, 3) and len(decoded) == 4 and set(labels) <= set(range(5))
    streamed, none = data.open_eval_set("tofu_tiny_images", "test[:60%]", config, limit=0, **kw)
    assert none is None and len(streamed) == 3 and len(decoded) == 4  # nothing read yet
    assert [v for *_, v in streamed.batches(2)] == [2, 1] and len(decoded) == 7
    assert data.eval_split_name("tofu_tiny_images", None, tiny_dir) == "test"


def test_idx_split_is_a_seeded_draw_with_the_calibration_seed_rule(tmp_path):
    """IDX files: ``limit`` rows of ``permutation(seed + (split == calib_split))``, resized, in the
    model's channels and normalisation; the evaluation set is the same arrays in memory."""
    directory = write_fashion_idx(tmp_path, train=12, test=9)
    raw, raw_labels = idx.load_split("train", directory)
    kw = dict(data_dir=directory, seed=3)
    images, labels = data.load_split(data.IDX_DATASET, "train", IDX_CONFIG, limit=5, offset=1, **kw)
    sel = batching.subset(12, 5, seed=3 + 1, offset=1)  # "train" is the calibration split: seed + 1
    np.testing.assert_array_equal(labels, raw_labels[sel])
    ref = transforms.renormalize(
        transforms.resize_nearest_area(np.repeat(transforms.to_model_range(raw[sel]), 3, -1), 16), "imagenet"
    )
    np.testing.assert_array_equal(images, ref)
    assert images.shape == (5, 16, 16, 3) and images.dtype == np.float32
    _, other = data.load_split(data.IDX_DATASET, "train", IDX_CONFIG, limit=5, calib_split="test", **kw)
    np.testing.assert_array_equal(other, raw_labels[batching.subset(12, 5, seed=3)])  # not calibration
    test_x, test_y = data.open_eval_set(data.IDX_DATASET, None, IDX_CONFIG, limit=4, **kw)
    ref_x, ref_y = data.load_split(data.IDX_DATASET, "test", IDX_CONFIG, limit=4, **kw)
    np.testing.assert_array_equal(test_x, ref_x)
    np.testing.assert_array_equal(test_y, ref_y)
    assert len(test_x) == 4
    with pytest.raises(UserError, match="pass --input-norm"):
        data.load_split(data.IDX_DATASET, "train", IDX_CONFIG.replace(input_norm=None), data_dir=directory)


def test_read_image_reads_one_image_and_checks_the_index(tmp_path):
    directory = write_fashion_idx(tmp_path, train=4, test=6)
    every, _ = data.load_split(data.IDX_DATASET, "test", IDX_CONFIG, data_dir=directory)
    np.testing.assert_array_equal(
        data.read_image(data.IDX_DATASET, None, IDX_CONFIG, 2, data_dir=directory), every[2]
    )
    with pytest.raises(UserError, match=r"--index 6 out of range 0\.\.5"):
        data.read_image(data.IDX_DATASET, "test", IDX_CONFIG, 6, data_dir=directory)


def test_read_image_of_a_source_decodes_only_that_image(tiny_dir, monkeypatch):
    config = ViTConfig(image_size=16, **{**TINY, "num_classes": 5}, input_norm="inception")
    decoded = []
    original = transforms.preprocess
    monkeypatch.setattr(transforms, "preprocess", lambda im, c: decoded.append(1) or original(im, c))
    image = data.read_image("tofu_tiny_images", "train", config, 12, data_dir=tiny_dir)
    assert image.shape == (16, 16, 3) and len(decoded) == 1
    with pytest.raises(UserError, match=r"--index 13 out of range 0\.\.12"):
        data.read_image("tofu_tiny_images", "train", config, 13, data_dir=tiny_dir)


def test_class_count_is_checked_before_reading(tiny_dir):
    config = ViTConfig(image_size=16, **TINY, input_norm="inception")  # 3 classes, the dataset has 5
    with pytest.raises(
        UserError, match="the test split of tofu_tiny_images has 5 classes but the model has 3"
    ):
        data.open_eval_set("tofu_tiny_images", None, config, data_dir=tiny_dir)
    with pytest.raises(UserError, match="the train split of tofu_tiny_images has 5 classes"):
        data.load_split("tofu_tiny_images", "train", config, data_dir=tiny_dir)
    images, _ = data.load_split(
        "tofu_tiny_images", "train", config, limit=2, data_dir=tiny_dir, labelled=False
    )
    assert images.shape == (2, 16, 16, 3)


def test_read_image_file(tmp_path, pil):
    config = ViTConfig(image_size=16, **TINY, input_norm="inception")
    pil.fromarray(photo(30, 20)).save(tmp_path / "a.png")
    np.testing.assert_array_equal(
        data.read_image_file(tmp_path / "a.png", config), transforms.preprocess(photo(30, 20), config)
    )
