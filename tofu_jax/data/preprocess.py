"""Host-side (NumPy) preprocessing shared by the IDX and TFDS pipelines."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from tofu_jax.errors import UserError


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
    from tofu_jax.data.tfds import resize

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


def batches(
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    *,
    rng: np.random.Generator | None = None,
    drop_remainder: bool = False,
) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
    """Yield ``(images, labels, valid)``; the last partial batch is padded to ``batch_size``.

    Padding keeps every batch the same shape (one compiled program); ``valid`` says how many rows
    are real so metrics never count the padding.
    """
    n = len(images)
    order = rng.permutation(n) if rng is not None else np.arange(n)
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        valid = len(idx)
        if valid < batch_size:
            if drop_remainder:
                return
            idx = np.concatenate([idx, np.repeat(idx[:1], batch_size - valid)])
        yield images[idx], labels[idx], valid
