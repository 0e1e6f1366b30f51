"""Per-image and per-array transforms: range conversion, normalisation, resampling against JAX and PIL,
crops, augmentation, and each checkpoint family's preprocessing against a reference computed
independently."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tofu_jax.data import transforms as T
from tofu_jax.errors import UserError
from tofu_jax.models.vit import ViTConfig

from .conftest import TINY, photo

IMAGENET = (np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225]))


def _images(n=6, size=8, c=1, seed=0):
    rng = np.random.default_rng(seed)
    return T.to_model_range(rng.integers(0, 256, (n, size, size, c), dtype=np.uint8))


# --------------------------------------------------------------------------------------------------
# Pixel ranges and normalisation
# --------------------------------------------------------------------------------------------------


def test_to_model_range():
    x = T.to_model_range(np.array([0, 127, 255], np.uint8))
    assert x.dtype == np.float32
    np.testing.assert_allclose(x, [-1.0, 127 / 127.5 - 1, 1.0], atol=1e-7)


def test_renormalize_needs_a_known_input_norm():
    x = np.zeros((1, 2, 2, 3), np.float32)
    with pytest.raises(UserError, match="pass --input-norm"):
        T.renormalize(x, None)
    with pytest.raises(UserError, match="input_norm must be one of"):
        T.renormalize(x, "zscore")
    np.testing.assert_allclose(T.renormalize(x, "imagenet")[0, 0, 0], (0.5 - np.array([0.485, 0.456, 0.406]))
                               / np.array([0.229, 0.224, 0.225]), rtol=1e-6)  # fmt: skip


# --------------------------------------------------------------------------------------------------
# Resampling and per-example crops
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape,out", [((47, 17), (20, 30)), ((120, 90), (32, 24)), ((7, 9), (28, 28))])
def test_resize_matches_jax_antialiased_bilinear(shape, out):
    import jax
    import jax.numpy as jnp

    img = np.random.default_rng(0).integers(0, 256, (*shape, 3)).astype(np.uint8)
    ours = T.resize(img, *out)
    ref = jax.image.resize(jnp.asarray(img, jnp.float32), (*out, 3), "bilinear", antialias=True)
    np.testing.assert_allclose(ours, np.asarray(ref), atol=5e-3)


def test_eval_crop_equals_resize_then_central_crop():
    img = np.random.default_rng(1).integers(0, 256, (50, 37, 3)).astype(np.uint8)
    size, frac = 16, 0.875
    short = int(size / frac)  # 18
    h = int(50 * short / 37)
    full = T.resize(img, h, short)
    top, left = round((h - size) / 2), round((short - size) / 2)
    ref = np.clip(full[top : top + size, left : left + size] / 127.5 - 1, -1, 1)
    np.testing.assert_allclose(T.eval_preprocess(img, size, frac), ref, atol=1e-5)


def test_eval_identity_at_native_size_and_channels():
    img = np.arange(28 * 28, dtype=np.uint8).reshape(28, 28, 1)
    x = T.eval_preprocess(img, 28, crop_fraction=1.0)
    np.testing.assert_allclose(x, img / 127.5 - 1, atol=1e-6)
    rgb = T.eval_preprocess(img, 28, crop_fraction=1.0, channels=3)
    assert rgb.shape == (28, 28, 3) and np.array_equal(rgb[..., 0], rgb[..., 2])
    gray = T.eval_preprocess(np.repeat(img, 3, -1), 28, crop_fraction=1.0, channels=1)
    np.testing.assert_allclose(gray, x, atol=1e-5)


def test_random_resized_box_within_image():
    rng = np.random.default_rng(0)
    for h, w in [(5, 40), (40, 5), (30, 30), (1, 1)]:
        for _ in range(50):
            top, left, ch, cw = T.random_resized_box(h, w, rng)
            assert top >= 0 and top + ch <= h and left >= 0 and left + cw <= w and ch > 0 and cw > 0


# --------------------------------------------------------------------------------------------------
# Each model family's recipe (preprocess)
# --------------------------------------------------------------------------------------------------


def _torchvision_style(PIL, image, resize_to, crop, filt):
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
def test_timm_recipe_matches_pil_resize_and_centre_crop(shape, pil):
    """timm: shorter side to floor(size / crop_pct) (bicubic), centre crop, ImageNet mean/std."""
    image = photo(*shape)
    config = ViTConfig(image_size=24, **TINY, crop_pct=0.9, interpolation="bicubic", input_norm="imagenet")
    ref = _torchvision_style(pil, image, math.floor(24 / 0.9), 24, pil.Resampling.BICUBIC)
    ref = (ref - IMAGENET[0]) / IMAGENET[1]
    ours = T.preprocess(image, config)
    err = np.abs(ours - ref)
    # PIL rounds to uint8 after each pass: at most about 1.5 levels of 255, here divided by std 0.224.
    assert err.max() < 2.0 / 255 / 0.224 and err.mean() < 0.6 / 255 / 0.224


def test_hf_deit_recipe_matches_pil_square_resize_and_crop(pil):
    """Hugging Face DeiT processor: both sides to 256 (here 36), bicubic, centre crop 224 (here 32)."""
    image = photo(45, 60, seed=1)
    config = ViTConfig(
        image_size=32,
        **TINY,
        resize="square",
        crop_pct=32 / 36,
        interpolation="bicubic",
        input_norm="imagenet",
    )
    ref = _torchvision_style(pil, image, (36, 36), 32, pil.Resampling.BICUBIC)
    ours = T.preprocess(image, config)
    err = np.abs(ours - (ref - IMAGENET[0]) / IMAGENET[1])
    assert err.max() < 2.0 / 255 / 0.224 and err.mean() < 0.6 / 255 / 0.224


def test_hf_vit_recipe_matches_pil_bilinear_square_resize(pil):
    """ViTImageProcessor: both sides to the size, bilinear (PIL, anti-aliased), [-1, 1]."""
    image = photo(70, 50, seed=2)
    config = ViTConfig(image_size=24, **TINY, resize="square", input_norm="inception")
    ref = _torchvision_style(pil, image, (24, 24), 24, pil.Resampling.BILINEAR) * 2 - 1
    err = np.abs(T.preprocess(image, config) - ref)
    assert err.max() < 2.0 / 255 * 2 and err.mean() < 0.6 / 255 * 2


def test_big_vision_recipe_is_tensorflow_bilinear_without_antialiasing():
    """big_vision / AugReg: tf.image.resize to the size (half-pixel bilinear, no anti-aliasing),
    [-1, 1]; reference: each output pixel interpolated from its four neighbours, written out."""
    image = photo(41, 29, seed=3).astype(np.float64)
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
    np.testing.assert_allclose(T.preprocess(image.astype(np.uint8), config), ref / 127.5 - 1, atol=1e-4)


def test_grayscale_and_alpha_images_become_the_model_channels():
    config = ViTConfig(image_size=16, **TINY, input_norm="inception")
    gray = T.preprocess(np.full((20, 20), 255, np.uint8), config)
    assert gray.shape == (16, 16, 3) and np.allclose(gray, 1.0)
    rgba = T.preprocess(np.zeros((16, 16, 4), np.uint8), config)
    assert rgba.shape == (16, 16, 3) and np.allclose(rgba, -1.0)


# --------------------------------------------------------------------------------------------------
# Whole arrays: resizing and augmentation
# --------------------------------------------------------------------------------------------------


def test_resize_nearest_area():
    x = _images(2, 8, 3)
    np.testing.assert_allclose(T.resize_nearest_area(x, 4), x.reshape(2, 4, 2, 4, 2, 3).mean((2, 4)))
    up = T.resize_nearest_area(x, 16)
    assert up.shape == (2, 16, 16, 3)
    np.testing.assert_array_equal(up[:, ::2, ::2], x)
    assert T.resize_nearest_area(x, 8) is x
    # Other factors (Ti/16 at 128 px from 28 px Fashion-MNIST): anti-aliased bilinear, as jax.image.
    import jax

    for size in (6, 20):
        ref = jax.image.resize(x, (2, size, size, 3), "bilinear", antialias=True)
        np.testing.assert_allclose(T.resize_nearest_area(x, size), np.asarray(ref), atol=1e-5)


@pytest.mark.parametrize("pad,flip", [(2, True), (4, False), (0, True)])
def test_augment_shapes_and_range(pad, flip):
    x = _images(16, 12, 3)
    out = T.augment(x, np.random.default_rng(0), pad=pad, flip=flip)
    assert out.shape == x.shape and out.dtype == np.float32
    assert out.min() >= -1.0 and out.max() <= 1.0
    assert not np.shares_memory(out, x)
    again = T.augment(x, np.random.default_rng(0), pad=pad, flip=flip)
    np.testing.assert_array_equal(out, again)  # deterministic given the generator


def test_augment_is_a_shifted_or_flipped_copy():
    x = _images(8, 10, 1)
    out = T.augment(x, np.random.default_rng(1), pad=2, flip=True)
    padded = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)), constant_values=-1.0)
    for i in range(len(x)):
        windows = [padded[i, dy : dy + 10, dx : dx + 10] for dy in range(5) for dx in range(5)]
        candidates = windows + [w[:, ::-1] for w in windows]
        assert any(np.array_equal(out[i], w) for w in candidates)
    assert np.array_equal(T.augment(x, np.random.default_rng(1), pad=0, flip=False), x)
