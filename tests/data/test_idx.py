"""IDX reader: round trips through tiny gzipped files, every kind of damage as a DataError, real files."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from tofu_jax.data import idx
from tofu_jax.errors import DataError

REAL_DIR = Path("/usr/share/datasets/fashion-mnist")


def _make_split(directory: Path, split: str, n_images: int, n_labels: int | None = None, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n_images, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n_labels if n_labels is not None else n_images, dtype=np.uint8)
    img_name, lbl_name = idx.FILES[split]
    idx.write_idx(directory / f"{img_name}.gz", images)
    idx.write_idx(directory / f"{lbl_name}.gz", labels)
    return images, labels


@pytest.fixture
def tiny(tmp_path):
    train = _make_split(tmp_path, "train", 7, seed=0)
    test = _make_split(tmp_path, "test", 3, seed=1)
    return tmp_path, train, test


def test_round_trip(tiny):
    directory, (train_x, train_y), (test_x, test_y) = tiny
    images, labels = idx.load_split("train", directory)
    assert images.shape == (7, 28, 28, 1) and images.dtype == np.uint8
    assert labels.shape == (7,) and labels.dtype == np.int32
    np.testing.assert_array_equal(images[..., 0], train_x)
    np.testing.assert_array_equal(labels, train_y)
    images, labels = idx.load_split("test", directory)
    np.testing.assert_array_equal(images[..., 0], test_x)
    np.testing.assert_array_equal(labels, test_y)


def test_uncompressed_files_and_env_dir(tmp_path, monkeypatch):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    idx.write_idx(tmp_path / "a.gz", arr)
    (tmp_path / "a").write_bytes(gzip.decompress((tmp_path / "a.gz").read_bytes()))
    np.testing.assert_array_equal(idx.read_idx(tmp_path / "a"), arr)
    monkeypatch.setenv("TOFU_JAX_FASHION_MNIST", str(tmp_path))
    assert idx.default_dir() == tmp_path


def _damage(path: Path, fn) -> None:
    path.write_bytes(fn(path.read_bytes()))


def _raw_idx(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


@pytest.mark.parametrize(
    "damage,match",
    [
        (lambda raw: raw[: len(raw) // 2], "corrupt or truncated gzip"),  # cut inside the deflate stream
        (lambda raw: raw[:-4], "corrupt or truncated gzip"),  # gzip trailer cut
        (lambda raw: raw[:-8] + bytes([raw[-8] ^ 1]) + raw[-7:], "corrupt or truncated gzip"),  # CRC
        (lambda raw: raw[:10] + bytes([raw[10] ^ 0x55]) + raw[11:], "corrupt or truncated gzip"),  # deflate
        (lambda raw: gzip.compress(b"\x00\x01\x08\x03" + gzip.decompress(raw)[4:]), "bad magic"),
        (lambda raw: gzip.compress(b"\x00\x00\x42\x03" + gzip.decompress(raw)[4:]), "bad magic"),
        (lambda raw: gzip.compress(gzip.decompress(raw)[:-5]), "truncated or padded"),
        (lambda raw: gzip.compress(gzip.decompress(raw) + b"\x00"), "truncated or padded"),
        (lambda raw: gzip.compress(gzip.decompress(raw)[:9]), "truncated inside its header"),
        (lambda raw: b"", "bad magic"),
    ],
)
def test_damaged_image_file(tiny, damage, match):
    directory = tiny[0]
    path = directory / "train-images-idx3-ubyte.gz"
    _damage(path, damage)
    with pytest.raises(DataError, match=match) as e:
        idx.load_split("train", directory)
    assert str(path) in str(e.value)  # the message names the file


def test_every_single_byte_corruption_is_a_data_error_or_detected(tmp_path):
    """Flipping any byte of a gzip file never escapes as a non-DataError exception."""
    arr = np.random.default_rng(0).integers(0, 256, (2, 5, 5), dtype=np.uint8)
    path = tmp_path / "x.gz"
    idx.write_idx(path, arr)
    raw = path.read_bytes()
    for i in range(len(raw)):
        path.write_bytes(raw[:i] + bytes([raw[i] ^ 0xA5]) + raw[i + 1 :])
        try:
            out = idx.read_idx(path)
        except DataError:
            continue
        # gzip header fields (mtime, flags like OS) may change without damage to the content
        np.testing.assert_array_equal(out, arr)


def test_mismatched_counts(tmp_path):
    _make_split(tmp_path, "train", 5, n_labels=4)
    with pytest.raises(DataError, match=r"images \(5, 28, 28\) and labels \(4,\) do not match"):
        idx.load_split("train", tmp_path)


def test_wrong_rank_and_label_range(tmp_path):
    img_name, lbl_name = idx.FILES["test"]
    idx.write_idx(tmp_path / f"{img_name}.gz", np.zeros((3, 784), np.uint8))
    idx.write_idx(tmp_path / f"{lbl_name}.gz", np.zeros(3, np.uint8))
    with pytest.raises(DataError, match="do not match"):
        idx.load_split("test", tmp_path)
    idx.write_idx(tmp_path / f"{img_name}.gz", np.zeros((3, 28, 28), np.uint8))
    idx.write_idx(tmp_path / f"{lbl_name}.gz", np.array([0, 10, 3], np.uint8))
    with pytest.raises(DataError, match="outside 0..9"):
        idx.load_split("test", tmp_path)


def test_missing_files_dir_and_split(tmp_path):
    with pytest.raises(DataError, match="split must be"):
        idx.load_split("validation", tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        idx.load_split("train", tmp_path / "nope")
    with pytest.raises(DataError, match=r"missing train-images-idx3-ubyte\(\.gz\)"):
        idx.load_split("train", tmp_path)
    with pytest.raises(DataError, match="cannot read IDX file"):
        idx.read_idx(tmp_path / "nothing.gz")


@pytest.mark.skipif(not REAL_DIR.is_dir(), reason=f"{REAL_DIR} not installed")
def test_real_fashion_mnist():
    for split, n in (("train", 60000), ("test", 10000)):
        images, labels = idx.load_split(split, REAL_DIR)
        assert images.shape == (n, 28, 28, 1) and images.dtype == np.uint8
        assert labels.shape == (n,) and labels.min() == 0 and labels.max() == 9
        np.testing.assert_array_equal(np.bincount(labels, minlength=10), np.full(10, n // 10))
        assert images.max() == 255 and images.min() == 0
