"""Host-side NumPy preprocessing: range conversion, resizing, augmentation, padded batches."""

from __future__ import annotations

import numpy as np
import pytest

from tofu_jax.data import preprocess as P


def _images(n=6, size=8, c=1, seed=0):
    rng = np.random.default_rng(seed)
    return P.to_model_range(rng.integers(0, 256, (n, size, size, c), dtype=np.uint8))


def test_to_model_range():
    x = P.to_model_range(np.array([0, 127, 255], np.uint8))
    assert x.dtype == np.float32
    np.testing.assert_allclose(x, [-1.0, 127 / 127.5 - 1, 1.0], atol=1e-7)


def test_resize_nearest_area():
    x = _images(2, 8, 3)
    np.testing.assert_allclose(P.resize_nearest_area(x, 4), x.reshape(2, 4, 2, 4, 2, 3).mean((2, 4)))
    up = P.resize_nearest_area(x, 16)
    assert up.shape == (2, 16, 16, 3)
    np.testing.assert_array_equal(up[:, ::2, ::2], x)
    assert P.resize_nearest_area(x, 8) is x
    # Other factors (Ti/16 at 128 px from 28 px Fashion-MNIST): anti-aliased bilinear, as jax.image.
    import jax

    for size in (6, 20):
        ref = jax.image.resize(x, (2, size, size, 3), "bilinear", antialias=True)
        np.testing.assert_allclose(P.resize_nearest_area(x, size), np.asarray(ref), atol=1e-5)


@pytest.mark.parametrize("pad,flip", [(2, True), (4, False), (0, True)])
def test_augment_shapes_and_range(pad, flip):
    x = _images(16, 12, 3)
    out = P.augment(x, np.random.default_rng(0), pad=pad, flip=flip)
    assert out.shape == x.shape and out.dtype == np.float32
    assert out.min() >= -1.0 and out.max() <= 1.0
    assert not np.shares_memory(out, x)
    again = P.augment(x, np.random.default_rng(0), pad=pad, flip=flip)
    np.testing.assert_array_equal(out, again)  # deterministic given the generator


def test_augment_is_a_shifted_or_flipped_copy():
    x = _images(8, 10, 1)
    out = P.augment(x, np.random.default_rng(1), pad=2, flip=True)
    padded = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)), constant_values=-1.0)
    for i in range(len(x)):
        windows = [padded[i, dy : dy + 10, dx : dx + 10] for dy in range(5) for dx in range(5)]
        candidates = windows + [w[:, ::-1] for w in windows]
        assert any(np.array_equal(out[i], w) for w in candidates)
    assert np.array_equal(P.augment(x, np.random.default_rng(1), pad=0, flip=False), x)


def test_batches_padding_and_valid():
    x = _images(10, 4)
    y = np.arange(10, dtype=np.int32)
    out = list(P.batches(x, y, 4))
    assert [v for *_, v in out] == [4, 4, 2]
    assert all(b.shape == (4, 4, 4, 1) and lb.shape == (4,) for b, lb, _ in out)
    seen = np.concatenate([lb[:v] for _, lb, v in out])
    np.testing.assert_array_equal(seen, y)  # in order, each exactly once
    xb, yb, v = out[-1]
    np.testing.assert_array_equal(yb, [8, 9, 8, 8])  # padding repeats the batch's first row
    np.testing.assert_array_equal(xb[v:], np.broadcast_to(xb[0], xb[v:].shape))


def test_batches_shuffle_and_drop_remainder():
    x = _images(10, 4)
    y = np.arange(10, dtype=np.int32)
    out = list(P.batches(x, y, 3, rng=np.random.default_rng(0)))
    seen = np.concatenate([lb[:v] for _, lb, v in out])
    assert sorted(seen.tolist()) == list(range(10)) and seen.tolist() != list(range(10))
    for xb, yb, v in out:
        np.testing.assert_array_equal(xb[:v], x[yb[:v]])
    dropped = list(P.batches(x, y, 3, drop_remainder=True))
    assert [v for *_, v in dropped] == [3, 3, 3]
    assert list(P.batches(x, y, 5, drop_remainder=True))[-1][2] == 5
    assert list(P.batches(x[:0], y[:0], 4)) == []


def test_renormalize_needs_a_known_input_norm():
    from tofu_jax.errors import UserError

    x = np.zeros((1, 2, 2, 3), np.float32)
    with pytest.raises(UserError, match="pass --input-norm"):
        P.renormalize(x, None)
    with pytest.raises(UserError, match="input_norm must be one of"):
        P.renormalize(x, "zscore")
    np.testing.assert_allclose(P.renormalize(x, "imagenet")[0, 0, 0], (0.5 - np.array([0.485, 0.456, 0.406]))
                               / np.array([0.229, 0.224, 0.225]), rtol=1e-6)  # fmt: skip
