"""Fixtures shared by the data tests: mocked TFDS datasets, a tiny real ArrayRecord dataset, synthetic
photos and a random-access source that counts its reads.

``tfds.testing.mock_data`` (tfds 4.9.10) patches ``builder.as_data_source`` with random examples of the
builder's real feature spec (AUTO policy falls back to USE_CODE: no metadata files needed), so fashion_mnist
(28x28x1), cifar10 (32x32x3), imagenet2012 and imagenette (variable sizes, 5..49 px) all work offline.
Mocked splits accept any name, so split checks and "not prepared" errors are tested on a real
dataset written here in the ArrayRecord format (raw zlib tensors: encoding PNG/JPEG would need TF or PIL).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

MOCKED = {  # name: (split, image_size, channels, num_classes)
    "fashion_mnist": ("test", 28, 1, 10),
    "cifar10": ("test", 32, 3, 10),
    "imagenet2012": ("validation", 24, 3, 1000),
    "imagenette": ("validation", 16, 3, 10),
}
TINY = dict(patch_size=8, width=16, depth=1, mlp_dim=32, num_heads=2, num_classes=3)  # ViTConfig fields


@pytest.fixture(scope="session")
def tfds():
    return pytest.importorskip("tensorflow_datasets")


@pytest.fixture(scope="session")
def pil():
    return pytest.importorskip("PIL.Image")


@pytest.fixture
def mock10(tfds):
    with tfds.testing.mock_data(num_examples=10):
        yield


def _tiny_builder(tfds):
    class TofuTinyImages(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        """Variable-size RGB images stored as raw zlib tensors; label = index % 5."""

        VERSION = tfds.core.Version("1.0.0")
        # tfds looks for a checksums file next to a builder's module through `importlib_resources`,
        # which this environment lacks; the builder downloads nothing, so there is no code path to look in.
        code_path = None

        def _info(self):
            image = tfds.features.Tensor(shape=(None, None, 3), dtype=np.uint8, encoding="zlib")
            features = tfds.features.FeaturesDict(
                {"image": image, "label": tfds.features.ClassLabel(num_classes=5)}
            )
            return tfds.core.DatasetInfo(builder=self, features=features)

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(13, 0), "test": self._generate_examples(5, 1)}

        def _generate_examples(self, n, seed):
            rng = np.random.default_rng(seed)
            for i in range(n):
                h, w = rng.integers(8, 20, 2)
                yield i, {"image": rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "label": i % 5}

    return TofuTinyImages


@pytest.fixture(scope="session")
def tiny_dir(tfds, tmp_path_factory) -> Path:
    """``tofu_tiny_images`` (train: 13, test: 5 examples, 5 classes) prepared as ArrayRecord files."""
    root = tmp_path_factory.mktemp("tfds")
    tfds.disable_progress_bar()
    _tiny_builder(tfds)(data_dir=str(root), file_format="array_record").download_and_prepare()
    return root


def photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth image with some texture: resampling filters differ visibly, rounding barely."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([128 + 100 * np.sin(x / 5 + c) * np.cos(y / 7 - c) for c in range(3)], -1)
    return np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)


class Counting:
    """A random-access source that counts the examples it hands out."""

    def __init__(self, n: int):
        self.n, self.reads = n, 0

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        self.reads += 1
        return {"image": photo(12, 12, seed=int(i) % 3), "label": int(i) % 3}


def collect(it):
    return [(x.copy(), y.copy(), v) for x, y, v in it]


def valid_rows(batches):
    xs = np.concatenate([x[:v] for x, _, v in batches])
    ys = np.concatenate([y[:v] for _, y, v in batches])
    return xs, ys
