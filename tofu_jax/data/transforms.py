"""Per-image and per-array transforms (NumPy, host side): pixel ranges and normalisations, resampling,
crops, augmentation, and each model's own evaluation recipe (:func:`preprocess`).

Pure functions of their inputs (augmentations take their ``np.random.Generator``). Images are
``[H, W, C]`` (one example) or ``[N, H, W, C]`` (a batch), C = 1 or 3.

Resampling is an anti-aliased bilinear (triangle kernel) or bicubic filter that matches
``jax.image.resize(..., "bilinear", antialias=True)`` and PIL:

* evaluation: resize the shorter side (or both) to ``int(image_size / crop_fraction)``, central crop
  ``image_size``, scale to [-1, 1] (:func:`eval_preprocess`; :func:`preprocess` adds the model's
  interpolation, anti-aliasing and mean/std);
* training: Inception-style random-resized crop (area ``scale``, aspect ``ratio``) + horizontal flip
  (:func:`train_preprocess`), or, for small fixed-size arrays, pad-and-crop + flip (:func:`augment`).
"""

from __future__ import annotations

import math

import numpy as np

from tofu_jax.errors import DataError, UserError

IMAGENET_SCALE = (0.08, 1.0)
IMAGENET_RATIO = (3.0 / 4.0, 4.0 / 3.0)
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R 601, as PIL's "L" conversion


# --------------------------------------------------------------------------------------------------
# Pixel ranges and normalisation
# --------------------------------------------------------------------------------------------------


def to_model_range(images: np.ndarray) -> np.ndarray:
    """``uint8 [..., H, W, C]`` -> ``float32`` in [-1, 1] (Google ViT convention)."""
    return images.astype(np.float32) / 127.5 - 1.0


# name: (per-channel mean, per-channel std) applied to pixels in [0, 1].
INPUT_NORMS = {
    "inception": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # [-1, 1]: Google/AugReg, HF ViT, many timm ViTs
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # DeiT and most timm CNN-era recipes
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
}


MISSING_INPUT_NORM = (
    "the model's pixel normalisation is unknown (bare timm weights do not record it): pass --input-norm "
    "(input_norm= in Python) inception ([-1, 1]: AugReg/Google ViTs), imagenet (DeiT and timm models "
    "with ImageNet mean/std) or clip, or the timm model name with --model, or keep timm's config.json "
    "beside the weights"
)


def check_input_norm(input_norm: str | None) -> None:
    """Raise :class:`UserError` unless ``input_norm`` names one of :data:`INPUT_NORMS`."""
    if input_norm is None:
        raise UserError(MISSING_INPUT_NORM)
    if input_norm not in INPUT_NORMS:
        raise UserError(f"input_norm must be one of {', '.join(INPUT_NORMS)}, got {input_norm!r}")


def renormalize(images: np.ndarray, input_norm: str | None) -> np.ndarray:
    """Map images from [-1, 1] to the ``input_norm`` convention (``[N, H, W, C]``, C = 1 or 3)."""
    check_input_norm(input_norm)
    mean, std = INPUT_NORMS[input_norm]
    if input_norm == "inception":
        return images
    if images.shape[-1] == 1:
        mean, std = (sum(mean) / 3,), (sum(std) / 3,)
    unit = (images + 1.0) / 2.0
    return ((unit - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)).astype(np.float32)


def input_norm_from_stats(mean, std) -> str | None:
    """The :data:`INPUT_NORMS` name whose mean/std match these values, else None."""
    for name, (m, s) in INPUT_NORMS.items():
        if (
            len(mean) == 3
            and len(std) == 3
            and np.allclose(mean, m, atol=1e-3)
            and np.allclose(std, s, atol=1e-3)
        ):
            return name
    return None


# --------------------------------------------------------------------------------------------------
# Resampling, crops and per-example preprocessing
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


def preprocess(image: np.ndarray, config) -> np.ndarray:
    """One decoded image ``uint8 [H, W, C]`` -> ``float32 [S, S, config.channels]`` as the model expects.

    Args:
      image: ``[H, W]`` or ``[H, W, 1|3|4]`` pixels in 0..255 (alpha dropped).
      config: a :class:`~tofu_jax.models.vit.ViTConfig` (its size, channels and preprocessing fields).
    """
    image = _as_hwc(image)
    h, w = image.shape[:2]
    size = config.image_size
    if (h, w) == (size, size) and config.crop_pct == 1.0:
        x = image.astype(np.float32)
    else:
        box = eval_box(h, w, size, config.crop_pct, config.resize)
        x = crop_and_resize(image, box, size, interpolation=config.interpolation, antialias=config.antialias)
    x = _finish(x, config.channels)
    return renormalize(x[None], config.input_norm)[0]


# --------------------------------------------------------------------------------------------------
# Whole arrays: resizing and augmentation
# --------------------------------------------------------------------------------------------------


def resize_nearest_area(images: np.ndarray, size: int) -> np.ndarray:
    """Area-average down-sampling by an integer factor, nearest up-sampling by one, else anti-aliased
    bilinear resampling (PIL's filter).

    Args:
      images: ``[N, H, W, C]`` float.  size: target side.
    """
    h = images.shape[1]
    if size == h:
        return images
    if h % size == 0:
        f = h // size
        n, _, w, c = images.shape
        return images.reshape(n, size, f, w // f, f, c).mean(axis=(2, 4))
    if size % h == 0:
        f = size // h
        return images.repeat(f, axis=1).repeat(f, axis=2)
    return np.stack([resize(image, size, size) for image in images]).astype(np.float32)


def augment(images: np.ndarray, rng: np.random.Generator, pad: int = 2, flip: bool = True) -> np.ndarray:
    """Random crop after zero padding (in [-1,1] space: pad with -1) and horizontal flip.

    Args:
      images: ``[N, H, W, C]`` float32 in [-1, 1].
    """
    n, h, w, _ = images.shape
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=-1.0)
    dy = rng.integers(0, 2 * pad + 1, n)
    dx = rng.integers(0, 2 * pad + 1, n)
    rows = dy[:, None] + np.arange(h)[None]
    cols = dx[:, None] + np.arange(w)[None]
    out = padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]
    if flip:
        mask = rng.random(n) < 0.5
        out[mask] = out[mask, :, ::-1]
    return out
