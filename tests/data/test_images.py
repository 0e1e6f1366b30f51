"""Each checkpoint family's preprocessing against a reference computed independently, image folders, and
reads that touch only the images they need."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tofu_jax.data import images as I
from tofu_jax.data.idx import DataError
from tofu_jax.errors import UserError
from tofu_jax.models.vit import ViTConfig

PIL = pytest.importorskip("PIL.Image")

IMAGENET = (np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225]))
TINY = dict(patch_size=8, width=16, depth=1, mlp_dim=32, num_heads=2, num_classes=3)


def _photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth image with some texture: resampling filters differ visibly, rounding barely."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([128 + 100 * np.sin(x / 5 + c) * np.cos(y / 7 - c) for c in range(3)], -1)
    return np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)


def _torchvision_style(image, resize_to, crop, filt):
    """torchvision's Resize + CenterCrop on a PIL image, written out: ``resize_to`` an int resizes the
    shorter side (longer side ``int(long * s / short)``), a pair resizes both; the crop offset is
    ``int(round((side - crop) / 2))``."""
    im = PIL.fromarray(image)
    w, h = im.size
    if isinstance(resize_to, int):
        size = (resize_to, int(resize_to * h / w)) if w <= h else (int(resize_to * w / h), resize_to)
    else:
        size = resize_to
    im = im.resize(size, filt)
    top, left = int(round((size[1] - crop) / 2.0)), int(round((size[0] - crop) / 2.0))
    return np.asarray(im.crop((left, top, left + crop, top + crop)), np.float64) / 255.0


@pytest.mark.parametrize("shape", [(50, 37), (40, 64)])
def test_timm_recipe_matches_pil_resize_and_centre_crop(shape):
    """timm: shorter side to floor(size / crop_pct) (bicubic), centre crop, ImageNet mean/std."""
    image = _photo(*shape)
    config = ViTConfig(image_size=24, **TINY, crop_pct=0.9, interpolation="bicubic", input_norm="imagenet")
    ref = _torchvision_style(image, math.floor(24 / 0.9), 24, PIL.Resampling.BICUBIC)
    ref = (ref - IMAGENET[0]) / IMAGENET[1]
    ours = I.preprocess(image, config)
    err = np.abs(ours - ref)
    # PIL rounds to uint8 after each pass: at most about 1.5 levels of 255, here divided by std 0.224.
    assert err.max() < 2.0 / 255 / 0.224 and err.mean() < 0.6 / 255 / 0.224


def test_hf_deit_recipe_matches_pil_square_resize_and_crop():
    """Hugging Face DeiT processor: both sides to 256 (here 36), bicubic, centre crop 224 (here 32)."""
    image = _photo(45, 60, seed=1)
    config = ViTConfig(
        image_size=32,
        **TINY,
        resize="square",
        crop_pct=32 / 36,
        interpolation="bicubic",
        input_norm="imagenet",
    )
    ref = _torchvision_style(image, (36, 36), 32, PIL.Resampling.BICUBIC)
    ours = I.preprocess(image, config)
    err = np.abs(ours - (ref - IMAGENET[0]) / IMAGENET[1])
    assert err.max() < 2.0 / 255 / 0.224 and err.mean() < 0.6 / 255 / 0.224


def test_hf_vit_recipe_matches_pil_bilinear_square_resize():
    """ViTImageProcessor: both sides to the size, bilinear (PIL, anti-aliased), [-1, 1]."""
    image = _photo(70, 50, seed=2)
    config = ViTConfig(image_size=24, **TINY, resize="square", input_norm="inception")
    ref = _torchvision_style(image, (24, 24), 24, PIL.Resampling.BILINEAR) * 2 - 1
    err = np.abs(I.preprocess(image, config) - ref)
    assert err.max() < 2.0 / 255 * 2 and err.mean() < 0.6 / 255 * 2


def test_big_vision_recipe_is_tensorflow_bilinear_without_antialiasing():
    """big_vision / AugReg: tf.image.resize to the size (half-pixel bilinear, no anti-aliasing),
    [-1, 1]; reference: each output pixel interpolated from its four neighbours, written out."""
    image = _photo(41, 29, seed=3).astype(np.float64)
    size = 16
    config = ViTConfig(image_size=size, **TINY, resize="square", antialias=False, input_norm="inception")
    h, w = image.shape[:2]
    ref = np.empty((size, size, 3))
    for i in range(size):
        for j in range(size):
            y = min(max((i + 0.5) * h / size - 0.5, 0), h - 1)
            x = min(max((j + 0.5) * w / size - 0.5, 0), w - 1)
            y0, x0 = int(y), int(x)
            y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
            dy, dx = y - y0, x - x0
            top = image[y0, x0] * (1 - dx) + image[y0, x1] * dx
            bottom = image[y1, x0] * (1 - dx) + image[y1, x1] * dx
            ref[i, j] = top * (1 - dy) + bottom * dy
    np.testing.assert_allclose(I.preprocess(image.astype(np.uint8), config), ref / 127.5 - 1, atol=1e-4)


def test_grayscale_and_alpha_images_become_the_model_channels():
    config = ViTConfig(image_size=16, **TINY, input_norm="inception")
    gray = I.preprocess(np.full((20, 20), 255, np.uint8), config)
    assert gray.shape == (16, 16, 3) and np.allclose(gray, 1.0)
    rgba = I.preprocess(np.zeros((16, 16, 4), np.uint8), config)
    assert rgba.shape == (16, 16, 3) and np.allclose(rgba, -1.0)


def _folder(root, counts=(3, 2)):
    for c, n in enumerate(counts):
        d = root / "val" / f"class_{c}"
        d.mkdir(parents=True)
        for k in range(n):
            suffix = ".png" if k % 2 else ".JPEG"
            PIL.fromarray(_photo(20 + k, 30, seed=k)).save(d / f"im{k}{suffix}")
    (root / "val" / "class_0" / "notes.txt").write_text("not an image")
    return root


def test_image_folder_lists_classes_and_decodes_lazily(tmp_path):
    source, num_classes = I.open_source("imagefolder", "val", _folder(tmp_path))
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
        I.open_source(
            "imagefolder", "val", make(tmp_path / "root" if needle == "does not exist" else tmp_path)
        )


def test_image_folder_needs_data_dir_and_names_broken_files(tmp_path):
    with pytest.raises(UserError, match="needs --data-dir ROOT"):
        I.open_source("imagefolder", "val", None)
    bad = tmp_path / "val" / "a"
    bad.mkdir(parents=True)
    (bad / "broken.png").write_bytes(b"\x89PNG not really")
    source, _ = I.open_source("imagefolder", "val", tmp_path)
    with pytest.raises(DataError, match="cannot read image .*broken.png"):
        source[0]


class _Counting:
    """A random-access source that counts the examples it hands out."""

    def __init__(self, n: int):
        self.n, self.reads = n, 0

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        self.reads += 1
        return {"image": _photo(12, 12, seed=int(i) % 3), "label": int(i) % 3}


def test_reads_decode_only_the_draw_and_stream_batch_by_batch():
    config = ViTConfig(image_size=16, **TINY, input_norm="inception")
    source = _Counting(100_000)  # a split far too large to read
    sel = I.subset(len(source), 6, seed=0, offset=2)
    assert len(sel) == 6 and (np.diff(sel) > 0).all()
    assert not set(sel) & set(I.subset(len(source), 2, seed=0))  # disjoint from the first 2 of the draw
    images, labels = I.read(source, sel, config)
    assert images.shape == (6, 16, 16, 3) and source.reads == 6
    np.testing.assert_array_equal(labels, sel % 3)
    streamed = I.StreamedImages(source, I.subset(len(source), 10, seed=1), config, "the val split")
    source.reads = 0
    seen = []
    for x, _, valid in streamed.batches(4):
        assert source.reads == sum(seen) + valid and x.shape == (4, 16, 16, 3)  # one batch at a time
        seen.append(valid)
    assert seen == [4, 4, 2] and source.reads == 10


def test_unlabelled_splits_are_refused_for_accuracy():
    config = ViTConfig(image_size=16, **TINY, input_norm="inception")

    class Unlabelled(_Counting):
        def __getitem__(self, i):
            return {"image": _photo(12, 12), "label": -1}

    streamed = I.StreamedImages(Unlabelled(8), np.arange(8), config, "the test split of imagenet2012")
    needle = r"test split of imagenet2012 has labels -1\.\.-1 .*--split validation"
    for first_read in (lambda: streamed.head(4), lambda: next(streamed.batches(4))):
        with pytest.raises(UserError, match=needle):
            first_read()
