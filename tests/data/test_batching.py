"""Index order, sharding and the one ``batches``: in-memory arrays, mocked TFDS datasets and a tiny real
ArrayRecord dataset, streamed evaluation sets, reads that touch only the images they need."""

from __future__ import annotations

import numpy as np
import pytest

from tofu_jax.data import batching as B
from tofu_jax.data import sources, transforms
from tofu_jax.errors import DataError, UserError
from tofu_jax.models.vit import ViTConfig

from .conftest import MOCKED, TINY, Counting, collect, photo, valid_rows

# --------------------------------------------------------------------------------------------------
# In-memory arrays
# --------------------------------------------------------------------------------------------------


def _images(n=6, size=8, c=1, seed=0):
    rng = np.random.default_rng(seed)
    return transforms.to_model_range(rng.integers(0, 256, (n, size, size, c), dtype=np.uint8))


def test_batches_padding_and_valid():
    x = _images(10, 4)
    y = np.arange(10, dtype=np.int32)
    out = list(B.batches(x, y, 4))
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
    out = list(B.batches(x, y, 3, rng=np.random.default_rng(0)))
    seen = np.concatenate([lb[:v] for _, lb, v in out])
    assert sorted(seen.tolist()) == list(range(10)) and seen.tolist() != list(range(10))
    for xb, yb, v in out:
        np.testing.assert_array_equal(xb[:v], x[yb[:v]])
    dropped = list(B.batches(x, y, 3, drop_remainder=True))
    assert [v for *_, v in dropped] == [3, 3, 3]
    assert list(B.batches(x, y, 5, drop_remainder=True))[-1][2] == 5
    assert list(B.batches(x[:0], y[:0], 4)) == []


def test_array_batches_follow_the_permutation_and_shard_like_sources():
    """``rng=`` takes ``rng.permutation(n)`` in slices (the training loops' epoch order); shuffled,
    sharded array batches cover every row once, in lockstep."""
    x, y = _images(10, 4), np.arange(10, dtype=np.int32)
    order = np.random.default_rng(5).permutation(10)
    out = list(B.batches(x, y, 3, rng=np.random.default_rng(5), drop_remainder=True))
    assert [yb.tolist() for _, yb, _ in out] == [order[i : i + 3].tolist() for i in (0, 3, 6)]
    per_process = [
        list(B.batches(x, y, 2, shuffle=True, seed=1, process_index=i, process_count=4)) for i in range(4)
    ]
    assert [[v for *_, v in b] for b in per_process] == [[2, 0], [2, 1], [2, 0], [2, 1]]
    seen = np.concatenate([yb[:v] for b in per_process for _, yb, v in b])
    assert sorted(seen.tolist()) == list(range(10))
    with pytest.raises(UserError, match="batch_size and image_size must be positive"):
        B.batches(x, y, 0)
    with pytest.raises(UserError, match="rng= shuffles for one process"):
        B.batches(x, y, 2, rng=np.random.default_rng(0), process_count=2)


# --------------------------------------------------------------------------------------------------
# Index order and sharding
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n,p", [(10, 1), (10, 3), (7, 4), (3, 5), (0, 2), (100, 7)])
def test_shard_indices_partition(n, p):
    for seed in (None, 5):
        shards = [B.shard_indices(n, i, p, shuffle_seed=seed, epoch=2) for i in range(p)]
        allidx = np.concatenate(shards)
        assert sorted(allidx.tolist()) == list(range(n))  # disjoint and complete
        assert max(map(len, shards)) - min(map(len, shards)) <= 1


# --------------------------------------------------------------------------------------------------
# Mocked named datasets
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(MOCKED))
@pytest.mark.parametrize("train", [False, True])
def test_batches_shapes_range_padding(name, train, mock10):
    split, size, channels, num_classes = MOCKED[name]
    out = collect(B.batches(name, split=split, batch_size=4, image_size=size, train=train, seed=3))
    assert [v for *_, v in out] == [4, 4, 2]
    for x, y, _ in out:
        assert x.shape == (4, size, size, channels) and x.dtype == np.float32
        assert y.shape == (4,) and y.dtype == np.int32
        assert x.min() >= -1.0 and x.max() <= 1.0 and x.max() > x.min()
        assert ((y >= 0) & (y < num_classes)).all()
    x, y, v = out[-1]
    assert np.array_equal(x[v:], np.broadcast_to(x[0], x[v:].shape)) and (y[v:] == y[0]).all()


def test_grayscale_to_rgb(mock10):
    (x, _, _), *_ = B.batches("fashion_mnist", split="test", batch_size=4, image_size=32, channels=3)
    assert x.shape == (4, 32, 32, 3)
    assert np.array_equal(x[..., 0], x[..., 1]) and np.array_equal(x[..., 1], x[..., 2])


def test_load_arrays_native_size(mock10):
    images, labels = B.load_arrays("fashion_mnist", "test")
    assert images.shape == (10, 28, 28, 1) and labels.shape == (10,) and labels.dtype == np.int32
    src, _ = sources.open_split("fashion_mnist", "test")
    np.testing.assert_allclose(images[3], src[3]["image"] / 127.5 - 1, atol=1e-6)
    images, _ = B.load_arrays("imagenet2012", "validation", 8, batch_size=3)
    assert images.shape == (10, 8, 8, 3)
    with pytest.raises(DataError, match="pass image_size"):
        B.load_arrays("imagenette", "validation")


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("process_count,batch_size", [(3, 2), (4, 3), (2, 4)])
def test_sharding_covers_each_example_once(train, process_count, batch_size, mock10):
    kw = dict(split="validation", batch_size=batch_size, image_size=12, train=train, seed=7)
    single = valid_rows(collect(B.batches("imagenette", **kw)))
    per_process = [
        collect(B.batches("imagenette", process_index=i, process_count=process_count, **kw))
        for i in range(process_count)
    ]
    assert len({len(b) for b in per_process}) == 1  # lockstep: same number of batches everywhere
    assert len(per_process[0]) == B.num_batches(10, batch_size, process_count)
    rows = [valid_rows(b) for b in per_process]
    xs, ys = np.concatenate([r[0] for r in rows]), np.concatenate([r[1] for r in rows])
    assert len(xs) == 10
    if not train:  # contiguous shards in process order reproduce the single-process stream
        np.testing.assert_array_equal(xs, single[0])
        np.testing.assert_array_equal(ys, single[1])
    else:  # same examples with the same augmentation, in another order
        key = lambda a: sorted(r.tobytes() for r in a)
        assert key(xs) == key(single[0])


def test_augmentation_deterministic(mock10):
    kw = dict(split="train", batch_size=4, image_size=16, train=True)
    a = collect(B.batches("imagenet2012", seed=1, **kw))
    b = collect(B.batches("imagenet2012", seed=1, **kw))
    for (xa, ya, va), (xb, yb, vb) in zip(a, b, strict=True):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
        assert va == vb
    c = collect(B.batches("imagenet2012", seed=2, **kw))
    d = collect(B.batches("imagenet2012", seed=1, epoch=1, **kw))
    assert not np.array_equal(a[0][0], c[0][0]) and not np.array_equal(a[0][0], d[0][0])
    # An example's augmentation does not depend on batching or threads (only on seed, epoch, index).
    e = collect(B.batches("imagenet2012", split="train", seed=1, batch_size=3, image_size=16, train=True))
    f = collect(B.batches("imagenet2012", seed=1, num_workers=2, **kw))
    np.testing.assert_array_equal(valid_rows(a)[0], valid_rows(e)[0])
    np.testing.assert_array_equal(valid_rows(a)[0], valid_rows(f)[0])


def test_drop_remainder_and_empty_shard_batches(mock10):
    out = collect(B.batches("cifar10", split="test", batch_size=4, image_size=32, drop_remainder=True))
    assert [v for *_, v in out] == [4, 4]
    # 10 examples over 4 processes at batch 2: shares 2,3,2,3 -> two batches each, some padded.
    vs = [
        [
            v
            for *_, v in B.batches(
                "cifar10", split="test", batch_size=2, image_size=32, process_index=i, process_count=4
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
        next(B.batches(Source(), batch_size=2, image_size=8))


def test_real_array_record_batches(tiny_dir):
    src, _ = sources.open_split("tofu_tiny_images", "train", tiny_dir)
    out = collect(B.batches(src, batch_size=4, image_size=10, process_index=1, process_count=2))
    assert [v for *_, v in out] == [4, 3] and out[0][0].shape == (4, 10, 10, 3)
    labels = np.concatenate([y[:v] for _, y, v in out])
    assert sorted(labels.tolist()) == sorted(int(src[i]["label"]) for i in range(6, 13))


def test_batches_fails_on_call_not_on_first_next(tmp_path, tfds):
    with pytest.raises(DataError, match="not prepared"):
        B.batches("cifar10", split="test", batch_size=2, image_size=32, data_dir=tmp_path)
    with pytest.raises(UserError, match="split is required"):
        B.batches("cifar10", batch_size=2, image_size=32)


# --------------------------------------------------------------------------------------------------
# Reading a draw, streaming an evaluation set
# --------------------------------------------------------------------------------------------------


def test_reads_decode_only_the_draw_and_stream_batch_by_batch():
    config = ViTConfig(image_size=16, **TINY, input_norm="inception")
    source = Counting(100_000)  # a split far too large to read
    sel = B.subset(len(source), 6, seed=0, offset=2)
    assert len(sel) == 6 and (np.diff(sel) > 0).all()
    assert not set(sel) & set(B.subset(len(source), 2, seed=0))  # disjoint from the first 2 of the draw
    images, labels = B.read(source, sel, config)
    assert images.shape == (6, 16, 16, 3) and source.reads == 6
    np.testing.assert_array_equal(labels, sel % 3)
    streamed = B.StreamedImages(source, B.subset(len(source), 10, seed=1), config, "the val split")
    source.reads = 0
    seen = []
    for x, _, valid in streamed.batches(4):
        assert source.reads == sum(seen) + valid and x.shape == (4, 16, 16, 3)  # one batch at a time
        seen.append(valid)
    assert seen == [4, 4, 2] and source.reads == 10


def test_streamed_batches_equal_reading_the_draw():
    """A streamed evaluation set yields what :func:`read` of the same indices gives, padded."""
    config = ViTConfig(image_size=16, **TINY, input_norm="inception")
    source, sel = Counting(50), B.subset(50, 5, seed=3)
    images, labels = B.read(source, sel, config)
    out = list(B.StreamedImages(source, sel, config, "x").batches(4))
    np.testing.assert_array_equal(np.concatenate([x[:v] for x, _, v in out]), images)
    np.testing.assert_array_equal(np.concatenate([y[:v] for _, y, v in out]), labels)
    x, y, v = out[-1]
    assert v == 1 and np.array_equal(x[1:], np.broadcast_to(x[0], x[1:].shape)) and (y == y[0]).all()


def test_unlabelled_splits_are_refused_for_accuracy():
    config = ViTConfig(image_size=16, **TINY, input_norm="inception")

    class Unlabelled(Counting):
        def __getitem__(self, i):
            return {"image": photo(12, 12), "label": -1}

    streamed = B.StreamedImages(Unlabelled(8), np.arange(8), config, "the test split of imagenet2012")
    needle = r"test split of imagenet2012 has labels -1\.\.-1 .*--split validation"
    for first_read in (lambda: streamed.head(4), lambda: next(streamed.batches(4))):
        with pytest.raises(UserError, match=needle):
            first_read()
