"""TFDS pipelines without TensorFlow: mocked named datasets plus a tiny real ArrayRecord dataset.

``tfds.testing.mock_data`` (tfds 4.9.10) patches ``builder.as_data_source`` with random examples of the
builder's real feature spec (AUTO policy falls back to USE_CODE: no metadata files needed), so fashion_mnist
(28x28x1), cifar10 (32x32x3), imagenet2012 and imagenette (variable sizes, 5..49 px) all work offline.
Mocked splits accept any name, so split checks and "not prepared" errors are tested on a real
dataset written here in the ArrayRecord format (raw zlib tensors: encoding PNG/JPEG would need TF or PIL).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from tofu_jax.data import tfds as T  # noqa: E402
from tofu_jax.data.idx import DataError  # noqa: E402

MOCKED = {  # name: (split, image_size, channels, num_classes)
    "fashion_mnist": ("test", 28, 1, 10),
    "cifar10": ("test", 32, 3, 10),
    "imagenet2012": ("validation", 24, 3, 1000),
    "imagenette": ("validation", 16, 3, 10),
}


@pytest.fixture
def mock10():
    with tfds.testing.mock_data(num_examples=10):
        yield


def _collect(it):
    return [(x.copy(), y.copy(), v) for x, y, v in it]


def _valid_rows(batches):
    xs = np.concatenate([x[:v] for x, _, v in batches])
    ys = np.concatenate([y[:v] for _, y, v in batches])
    return xs, ys


# --------------------------------------------------------------------------------------------------
# Resampling
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
# Mocked named datasets
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(MOCKED))
def test_spec_from_builder_info(name, mock10):
    _, size, channels, num_classes = MOCKED[name]
    spec = T.dataset_spec(name)
    assert spec.num_classes == num_classes and spec.channels == channels
    if name in ("fashion_mnist", "cifar10"):
        assert spec.image_shape == (size, size, channels) and spec.fixed_size
    else:
        assert spec.image_shape == (None, None, 3) and not spec.fixed_size


@pytest.mark.parametrize("name", list(MOCKED))
@pytest.mark.parametrize("train", [False, True])
def test_batches_shapes_range_padding(name, train, mock10):
    split, size, channels, num_classes = MOCKED[name]
    out = _collect(T.batches(name, split, batch_size=4, image_size=size, train=train, seed=3))
    assert [v for *_, v in out] == [4, 4, 2]
    for x, y, _ in out:
        assert x.shape == (4, size, size, channels) and x.dtype == np.float32
        assert y.shape == (4,) and y.dtype == np.int32
        assert x.min() >= -1.0 and x.max() <= 1.0 and x.max() > x.min()
        assert ((y >= 0) & (y < num_classes)).all()
    x, y, v = out[-1]
    assert np.array_equal(x[v:], np.broadcast_to(x[0], x[v:].shape)) and (y[v:] == y[0]).all()


def test_grayscale_to_rgb(mock10):
    (x, _, _), *_ = T.batches("fashion_mnist", "test", batch_size=4, image_size=32, channels=3)
    assert x.shape == (4, 32, 32, 3)
    assert np.array_equal(x[..., 0], x[..., 1]) and np.array_equal(x[..., 1], x[..., 2])


def test_load_arrays_native_size(mock10):
    images, labels = T.load_arrays("fashion_mnist", "test")
    assert images.shape == (10, 28, 28, 1) and labels.shape == (10,) and labels.dtype == np.int32
    src, _ = T.open_split("fashion_mnist", "test")
    np.testing.assert_allclose(images[3], src[3]["image"] / 127.5 - 1, atol=1e-6)
    images, _ = T.load_arrays("imagenet2012", "validation", 8, batch_size=3)
    assert images.shape == (10, 8, 8, 3)
    with pytest.raises(DataError, match="pass image_size"):
        T.load_arrays("imagenette", "validation")


@pytest.mark.parametrize("n,p", [(10, 1), (10, 3), (7, 4), (3, 5), (0, 2), (100, 7)])
def test_shard_indices_partition(n, p):
    for seed in (None, 5):
        shards = [T.shard_indices(n, i, p, shuffle_seed=seed, epoch=2) for i in range(p)]
        allidx = np.concatenate(shards)
        assert sorted(allidx.tolist()) == list(range(n))  # disjoint and complete
        assert max(map(len, shards)) - min(map(len, shards)) <= 1


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("process_count,batch_size", [(3, 2), (4, 3), (2, 4)])
def test_sharding_covers_each_example_once(train, process_count, batch_size, mock10):
    kw = dict(batch_size=batch_size, image_size=12, train=train, seed=7)
    single = _valid_rows(_collect(T.batches("imagenette", "validation", **kw)))
    per_process = [
        _collect(T.batches("imagenette", "validation", process_index=i, process_count=process_count, **kw))
        for i in range(process_count)
    ]
    assert len({len(b) for b in per_process}) == 1  # lockstep: same number of batches everywhere
    assert len(per_process[0]) == T.num_batches(10, batch_size, process_count)
    rows = [_valid_rows(b) for b in per_process]
    xs, ys = np.concatenate([r[0] for r in rows]), np.concatenate([r[1] for r in rows])
    assert len(xs) == 10
    if not train:  # contiguous shards in process order reproduce the single-process stream
        np.testing.assert_array_equal(xs, single[0])
        np.testing.assert_array_equal(ys, single[1])
    else:  # same examples with the same augmentation, in another order
        key = lambda a: sorted(r.tobytes() for r in a)
        assert key(xs) == key(single[0])


def test_augmentation_deterministic(mock10):
    kw = dict(batch_size=4, image_size=16, train=True)
    a = _collect(T.batches("imagenet2012", "train", seed=1, **kw))
    b = _collect(T.batches("imagenet2012", "train", seed=1, **kw))
    for (xa, ya, va), (xb, yb, vb) in zip(a, b, strict=True):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
        assert va == vb
    c = _collect(T.batches("imagenet2012", "train", seed=2, **kw))
    d = _collect(T.batches("imagenet2012", "train", seed=1, epoch=1, **kw))
    assert not np.array_equal(a[0][0], c[0][0]) and not np.array_equal(a[0][0], d[0][0])
    # An example's augmentation does not depend on batching or threads (only on seed, epoch, index).
    e = _collect(T.batches("imagenet2012", "train", seed=1, batch_size=3, image_size=16, train=True))
    f = _collect(T.batches("imagenet2012", "train", seed=1, num_workers=2, **kw))
    np.testing.assert_array_equal(_valid_rows(a)[0], _valid_rows(e)[0])
    np.testing.assert_array_equal(_valid_rows(a)[0], _valid_rows(f)[0])


def test_drop_remainder_and_empty_shard_batches(mock10):
    out = _collect(T.batches("cifar10", "test", batch_size=4, image_size=32, drop_remainder=True))
    assert [v for *_, v in out] == [4, 4]
    # 10 examples over 4 processes at batch 2: shares 2,3,2,3 -> two batches each, some padded.
    vs = [
        [
            v
            for *_, v in T.batches(
                "cifar10", "test", batch_size=2, image_size=32, process_index=i, process_count=4
            )
        ]
        for i in range(4)
    ]
    assert vs == [[2, 0], [2, 1], [2, 0], [2, 1]]


def test_missing_image_decoder_is_a_data_error():
    class Source:
        def __len__(self):
            return 3

        def __getitem__(self, i):
            raise ImportError("Decoding images with NumPy requires either OpenCV or PIL.")

    with pytest.raises(DataError, match="pip install pillow"):
        next(T.batches(Source(), batch_size=2, image_size=8))


# --------------------------------------------------------------------------------------------------
# A real (tiny) ArrayRecord dataset, read through the TFDS data source without mocks
# --------------------------------------------------------------------------------------------------


class TofuTinyImages(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Variable-size RGB images stored as raw zlib tensors; label = index % 5."""

    VERSION = tfds.core.Version("1.0.0")
    # tfds looks for a checksums file next to a builder's module through `importlib_resources`, which
    # this environment lacks; the builder downloads nothing, so there is no code path to look in.
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


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tfds")
    tfds.disable_progress_bar()
    TofuTinyImages(data_dir=str(root), file_format="array_record").download_and_prepare()
    return root


def test_real_array_record_source(tiny_dir):
    spec = T.dataset_spec("tofu_tiny_images", tiny_dir)
    assert spec.num_classes == 5 and spec.splits == {"train": 13, "test": 5}
    src, _ = T.open_split("tofu_tiny_images", "train", tiny_dir)
    assert len(src) == 13 and src[0]["image"].dtype == np.uint8
    assert len(T.open_split("tofu_tiny_images", "train[:5]+test", tiny_dir)[0]) == 10
    out = _collect(T.batches(src, batch_size=4, image_size=10, process_index=1, process_count=2))
    assert [v for *_, v in out] == [4, 3] and out[0][0].shape == (4, 10, 10, 3)
    labels = np.concatenate([y[:v] for _, y, v in out])
    assert sorted(labels.tolist()) == sorted(int(src[i]["label"]) for i in range(6, 13))


@pytest.mark.parametrize(
    "split,match",
    [("validation", "no split 'validation'"), ("train[", r"cannot read split .train\[.*Error parsing split")],
)
def test_unknown_split(tiny_dir, split, match):
    with pytest.raises(DataError, match=match) as e:
        T.open_split("tofu_tiny_images", split, tiny_dir)
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
        T.open_split("tofu_tiny_images", "train", tmp_path)


def test_not_prepared_errors(tmp_path):
    with pytest.raises(DataError, match="manual download") as e:
        T.open_split("imagenet2012", "validation", tmp_path)
    assert str(tmp_path / "downloads" / "manual") in str(e.value)
    assert "ILSVRC2012_img_val.tar" in str(e.value)
    with pytest.raises(DataError, match=r"not prepared.*tfds build cifar10"):
        T.open_split("cifar10", "test", tmp_path)
    with pytest.raises(DataError, match="no_such_dataset"):
        T.open_split("no_such_dataset", "train", tmp_path)


def test_batches_fails_on_call_not_on_first_next(tmp_path):
    with pytest.raises(DataError, match="not prepared"):
        T.batches("cifar10", "test", batch_size=2, image_size=32, data_dir=tmp_path)


def test_cli_splits_take_tfds_syntax_and_read_only_their_draw(tiny_dir, monkeypatch):
    """``--split test[:60%]`` / ``--calib-split train[:10]`` reach TFDS as written; calibration decodes
    only its draw, evaluation one batch at a time."""
    from tofu_jax import cli
    from tofu_jax.data import images as image_data
    from tofu_jax.models.vit import ViTConfig

    config = ViTConfig(image_size=16, patch_size=8, width=16, depth=1, mlp_dim=32, num_heads=2,
                       num_classes=5, input_norm="inception")  # fmt: skip
    argv = ["run", "--dataset", "tofu_tiny_images", "--data-dir", str(tiny_dir), "--split", "test[:60%]",
            "--calib-split", "train[:10]"]  # fmt: skip
    args = cli.build_parser().parse_args(argv)
    decoded = []
    monkeypatch.setattr(image_data, "preprocess", lambda im, c: decoded.append(1) or np.zeros((16, 16, 3)))
    images, labels = cli._load_split(args, config, args.calib_split, 4)
    assert images.shape == (4, 16, 16, 3) and len(decoded) == 4 and set(labels) <= set(range(5))
    streamed, none = cli._eval_set(args, config, 0)
    assert none is None and len(streamed) == 3 and len(decoded) == 4  # nothing read yet
    assert [v for *_, v in streamed.batches(2)] == [2, 1] and len(decoded) == 7
    args.split = None
    assert cli._eval_split_name(args) == "test"
