"""Google / big_vision ``.npz`` checkpoints: round trip, layout variants, resampling, head, errors."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from tofu_jax.checkpoints import google, load
from tofu_jax.checkpoints.common import CheckpointError, flatten, unflatten
from tofu_jax.models.vit import ViT, ViTConfig

from .helpers import TINY, random_flat

POS = "Transformer/posembed_input/pos_embedding"
CONFIG = ViTConfig(**TINY)


def _logits(params, config=CONFIG, seed=0):
    images = np.random.default_rng(seed).uniform(-1, 1, (2, config.image_size, config.image_size, 3))
    return np.asarray(ViT(config).apply({"params": params}, jnp.asarray(images, jnp.float32)))


def _assert_same(params, flat):
    got = flatten(params)
    assert set(got) == set(flat)
    for k, v in flat.items():
        np.testing.assert_array_equal(np.asarray(got[k]), v, err_msg=k)


def _savez(path, flat):
    np.savez(path, **flat)
    return path


def _save(path, flat):
    google.save_npz(path, unflatten(flat))
    return path


def test_save_npz_roundtrip(tmp_path):
    flat = random_flat(CONFIG)
    google.save_npz(tmp_path / "ckpt.npz", unflatten(flat))
    params = load.load_params(tmp_path / "ckpt.npz", CONFIG)
    _assert_same(params, flat)
    assert all(np.asarray(v).dtype == np.float32 for v in flatten(params).values())


_LINEN = {"MultiHeadDotProductAttention_1": "MultiHeadDotProductAttention_0", "LayerNorm_2": "LayerNorm_1"}
_LINEN["MlpBlock_3"] = "MlpBlock_0"


def _big_vision(flat, *, prefix=False, linen=False, root_posemb=False, scanned=False):
    """Rewrite canonical names the way big_vision checkpoints spell them."""
    out = {}
    for k, v in flat.items():
        parts = k.split("/")
        if linen and parts[0] == "Transformer" and parts[1].startswith("encoderblock_"):
            parts[2] = _LINEN.get(parts[2], parts[2])
        out["/".join(parts)] = v
    if root_posemb:
        out["pos_embedding"] = out.pop(POS)[:, 1:]  # patches only: big_vision adds it before the CLS
    if scanned:
        blocks = sorted({k.split("/")[1] for k in out if k.startswith("Transformer/encoderblock_")})
        rest = {k.split("/", 2)[2] for k in out if k.startswith("Transformer/encoderblock_0/")}
        for sub in rest:
            out[f"Transformer/encoderblock/{sub}"] = np.stack([out[f"Transformer/{b}/{sub}"] for b in blocks])
        out = {k: v for k, v in out.items() if not k.startswith("Transformer/encoderblock_")}
    if prefix:
        out = {f"params/{k}": v for k, v in out.items()}
    return out


VARIANTS = {
    "params_prefix": dict(prefix=True),
    "linen_names": dict(linen=True),
    "root_posemb": dict(root_posemb=True),
    "scanned": dict(scanned=True),
    "scanned_linen": dict(scanned=True, linen=True),
    "all": dict(prefix=True, linen=True, root_posemb=True, scanned=True),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_big_vision_variants_load_to_the_same_params(tmp_path, variant):
    kw = VARIANTS[variant]
    flat = random_flat(CONFIG)
    if kw.get("root_posemb"):
        flat[POS][:, 0] = 0  # no CLS row in big_vision: it loads as zeros
    path = _savez(tmp_path / "bv.npz", _big_vision(flat, **kw))
    _assert_same(load.load_params(path, CONFIG), flat)


def test_big_vision_gives_identical_logits(tmp_path):
    flat = random_flat(CONFIG)
    flat[POS][:, 0] = 0
    reference = _logits(unflatten(flat))
    path = _savez(tmp_path / "bv.npz", _big_vision(flat, **VARIANTS["all"]))
    np.testing.assert_array_equal(_logits(load.load_params(path, CONFIG)), reference)


@pytest.mark.parametrize("distilled", [False, True])
def test_posemb_is_resampled_for_another_image_size(tmp_path, distilled):
    small = CONFIG.replace(distilled=distilled)
    flat = random_flat(small)
    pos = flat[POS]
    prefix = small.num_prefix
    pos[:, prefix:] = 0.25  # a constant grid must stay constant under bilinear resampling
    path = _save(tmp_path / "small.npz", flat)
    big = small.replace(image_size=48)  # grid 4x4 -> 6x6
    params = flatten(load.load_params(path, big))
    new = np.asarray(params[POS])
    assert new.shape == (1, prefix + 36, small.width)
    np.testing.assert_array_equal(new[:, :prefix], pos[:, :prefix])  # CLS / dist rows untouched
    np.testing.assert_allclose(new[:, prefix:], 0.25, rtol=1e-6)
    for k in flat:
        if k != POS:
            np.testing.assert_array_equal(np.asarray(params[k]), flat[k], err_msg=k)
    assert np.all(np.isfinite(_logits(unflatten(params), big)))


def test_head_is_reset_only_when_asked(tmp_path):
    flat = random_flat(CONFIG)
    path = _save(tmp_path / "c.npz", flat)
    five = CONFIG.replace(num_classes=5)
    with pytest.raises(CheckpointError) as e:
        load.load_params(path, five)
    msg = str(e.value)
    assert "head/kernel: checkpoint (64, 10) vs model (64, 5)" in msg
    assert "head/bias: checkpoint (10,) vs model (5,)" in msg
    assert "reset_head=True" in msg

    params = flatten(load.load_params(path, five, reset_head=True))
    assert params["head/kernel"].shape == (64, 5)
    np.testing.assert_array_equal(params["head/kernel"], 0)
    np.testing.assert_array_equal(params["head/bias"], 0)
    for k in flat:
        if not k.startswith("head/"):
            np.testing.assert_array_equal(np.asarray(params[k]), flat[k], err_msg=k)

    kept = flatten(load.load_params(path, CONFIG))  # same class count, no reset asked: head kept
    np.testing.assert_array_equal(np.asarray(kept["head/kernel"]), flat["head/kernel"])
    reset = flatten(load.load_params(path, CONFIG, reset_head=True))  # asked: reset even if it fits
    np.testing.assert_array_equal(reset["head/kernel"], 0)


def test_every_mismatch_is_listed_in_one_error(tmp_path):
    flat = random_flat(CONFIG)
    del flat["Transformer/encoderblock_1/LayerNorm_2/scale"]
    del flat["cls"]
    flat["Transformer/encoderblock_7/LayerNorm_0/scale"] = np.ones(64, np.float32)
    flat["extra"] = np.ones(3, np.float32)
    flat["embedding/kernel"] = np.zeros((16, 16, 3, 64), np.float32)
    flat["Transformer/encoderblock_0/MlpBlock_3/Dense_0/bias"] = np.zeros(7, np.float32)
    with pytest.raises(CheckpointError) as e:
        load.load_params(_savez(tmp_path / "bad.npz", flat), CONFIG)
    msg = str(e.value)
    assert "2 missing key(s)" in msg and "2 unexpected key(s)" in msg and "2 mis-shaped key(s)" in msg
    for name in (
        "Transformer/encoderblock_1/LayerNorm_2/scale",
        "cls",
        "Transformer/encoderblock_7/LayerNorm_0/scale",
        "extra",
        "embedding/kernel: checkpoint (16, 16, 3, 64) vs model (8, 8, 3, 64)",
        "Transformer/encoderblock_0/MlpBlock_3/Dense_0/bias: checkpoint (7,) vs model (128,)",
    ):
        assert name in msg
    assert str(tmp_path / "bad.npz") in msg


def test_non_finite_values_are_listed(tmp_path):
    flat = random_flat(CONFIG)
    flat["Transformer/encoderblock_0/LayerNorm_0/scale"][3] = np.nan
    flat["head/bias"][0] = np.inf
    with pytest.raises(CheckpointError) as e:
        load.load_params(_savez(tmp_path / "nan.npz", flat), CONFIG)
    msg = str(e.value)
    assert "NaN or Inf" in msg
    assert "Transformer/encoderblock_0/LayerNorm_0/scale" in msg and "head/bias" in msg
    assert "LayerNorm_2" not in msg  # only the bad keys are named


def test_object_arrays_are_refused_without_pickle(tmp_path):
    flat = random_flat(CONFIG)
    flat["meta"] = np.array([{"exec": "me"}], dtype=object)
    np.savez(tmp_path / "pickled.npz", **flat)
    with pytest.raises(CheckpointError, match="pickled Python objects"):
        load.load_params(tmp_path / "pickled.npz", CONFIG)


def test_file_and_format_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load.load_params(tmp_path / "nope.npz", CONFIG)
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="junk.npz"):
        load.load_params(tmp_path / "junk.npz", CONFIG)
    with pytest.raises(CheckpointError, match="unknown checkpoint format"):
        load.load_params(tmp_path / "junk.npz", CONFIG, fmt="keras")
