"""Damaged, mistyped and hostile files through the Python API: each must raise the documented error."""

from __future__ import annotations

import contextlib
import gzip
import json
import pickle

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz.conftest import CONFIG
from tofu_jax.checkpoints import load
from tofu_jax.checkpoints.common import CheckpointError
from tofu_jax.data.idx import read_idx
from tofu_jax.errors import ConfigError, DataError, UserError
from tofu_jax.models.loading import load_model, resolve_config
from tofu_jax.profiler import Profile
from tofu_jax.schedule import Schedule, ScheduleError

POS = "Transformer/posembed_input/pos_embedding"
FUZZ = settings(suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)


def _damage(raw: bytes, data) -> bytes:
    """Truncate at a random offset or flip 1-8 random bits."""
    if data.draw(st.booleans(), label="truncate"):
        return raw[: data.draw(st.integers(0, len(raw) - 1), label="offset")]
    out = bytearray(raw)
    for _ in range(data.draw(st.integers(1, 8), label="flips")):
        pos = data.draw(st.integers(0, len(out) - 1), label="pos")
        out[pos] ^= 1 << data.draw(st.integers(0, 7), label="bit")
    return bytes(out)


@FUZZ
@given(data=st.data())
def test_damaged_npz_checkpoint(files, tmp_path, data):
    path = tmp_path / "damaged.npz"
    path.write_bytes(_damage((files / "model.npz").read_bytes(), data))
    with contextlib.suppress(CheckpointError):  # a flip inside array data can leave a readable file
        load.load_params(path, CONFIG)


@FUZZ
@given(data=st.data())
def test_damaged_safetensors_checkpoint(files, tmp_path, data):
    from safetensors.numpy import save_file

    seed = tmp_path / "seed.safetensors"
    save_file({"cls_token": np.zeros((1, 1, 16), np.float32), "pos_embed": np.ones((1, 17, 16), np.float32)},
              str(seed))  # fmt: skip
    path = tmp_path / "damaged.safetensors"
    path.write_bytes(_damage(seed.read_bytes(), data))
    with pytest.raises(CheckpointError):  # even intact, two tensors are not a whole model
        load_model(path, str(files / "card.json"))


@pytest.mark.parametrize("size", [0, 1, 22, 100])
def test_empty_and_tiny_files(tmp_path, size):
    for suffix in (".npz", ".safetensors"):
        path = tmp_path / f"short{suffix}"
        path.write_bytes(b"\x50\x4b\x03\x04" * size)
        with pytest.raises(CheckpointError, match="short"):
            load_model(path, "Ti/16")


def test_pickled_payloads_are_refused(tmp_path):
    flat = {k: v for k, v in np.load(_valid_npz(tmp_path)).items()}
    flat["evil"] = np.array([{"os": "system"}], dtype=object)
    np.savez(tmp_path / "pickled.npz", **flat)
    with pytest.raises(CheckpointError, match="pickled Python objects"):
        load.load_params(tmp_path / "pickled.npz", CONFIG)
    (tmp_path / "raw.npz").write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(CheckpointError):
        load.load_params(tmp_path / "raw.npz", CONFIG)


def _valid_npz(tmp_path):
    from tests.checkpoints.helpers import random_flat
    from tofu_jax.checkpoints import google
    from tofu_jax.checkpoints.common import unflatten

    path = tmp_path / "valid.npz"
    google.save_npz(path, unflatten(random_flat(CONFIG)))
    return path


@pytest.mark.parametrize(
    "change,needle",
    [
        (lambda f: f.pop("head/kernel"), "1 missing key"),
        (lambda f: f.update(extra=np.zeros(3, np.float32)), "1 unexpected key"),
        (lambda f: f.update({"head/kernel": np.zeros((16, 11), np.float32)}), "mis-shaped"),
        (lambda f: f.update({"head/kernel": np.zeros((16,), np.float32)}), "mis-shaped"),
        (lambda f: f.update({"head/kernel": np.zeros((16, 10), np.int32)}), "non-floating-point"),
        (lambda f: f.update({"head/bias": np.zeros(10, bool)}), "non-floating-point"),
        (lambda f: f.update({"head/bias": np.full(10, np.nan, np.float32)}), "NaN or Inf"),
        (lambda f: f.update({"head/bias": np.full(10, np.inf, np.float32)}), "NaN or Inf"),
        (lambda f: f.update({POS: np.zeros(5, np.float32)}), "mis-shaped"),
    ],
)  # fmt: skip
def test_wrong_keys_dtypes_shapes_ranks(tmp_path, change, needle):
    flat = dict(np.load(_valid_npz(tmp_path)))
    change(flat)
    np.savez(tmp_path / "changed.npz", **flat)
    with pytest.raises(CheckpointError, match=needle):
        load.load_params(tmp_path / "changed.npz", CONFIG)


CONFIG_FIELDS = list(CONFIG.to_dict())
BAD_VALUES = st.one_of(
    st.text(max_size=3), st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=1),
    st.integers(-5, 0), st.floats(allow_nan=True, allow_infinity=True), st.booleans(), st.none(),
)  # fmt: skip


@FUZZ
@given(field=st.sampled_from(CONFIG_FIELDS), value=BAD_VALUES)
def test_mistyped_config_fields(tmp_path, field, value):
    card = {"config": CONFIG.to_dict() | {field: value}}
    path = tmp_path / "card.json"
    path.write_text(json.dumps(card))
    try:
        resolve_config(str(path))
    except ConfigError as e:
        assert field in str(e) or "is not a multiple of" in str(e) or "divisible" in str(e)
        return
    assert _valid(field, value), f"{field}={value!r} was accepted"


def _valid(field, value) -> bool:
    real = isinstance(value, int | float) and not isinstance(value, bool) and np.isfinite(value)
    positive_int = isinstance(value, int) and not isinstance(value, bool) and value >= 1
    rules = {
        "classifier": lambda: value in ("token", "gap", "map"),
        "resize": lambda: value in ("shorter", "square"),
        "interpolation": lambda: value in ("bilinear", "bicubic"),
        "crop_pct": lambda: real and 0 < value <= 1,
        "num_registers": lambda: isinstance(value, int) and not isinstance(value, bool) and value >= 0,
        "dtype": lambda: value in ("float32", "bfloat16", "float16"),
        "input_norm": lambda: value in (None, "inception", "imagenet", "clip"),
        "representation_size": lambda: value is None or positive_int,
        "layernorm_eps": lambda: real and 0 < value < 1,
        "dropout_rate": lambda: real and 0 <= value < 1,
    }
    if field in (
        "cls_token",
        "distilled",
        "fc_norm",
        "gelu_approximate",
        "layer_scale",
        "norm_pre",
        "antialias",
    ):
        return isinstance(value, bool)
    return rules[field]() if field in rules else positive_int


@pytest.mark.parametrize("text", ["", "[]", "3", '"config"', "{", '{"config": [1]}', '{"config": {"x": 1}}'])
def test_malformed_model_cards(tmp_path, text):
    path = tmp_path / "card.json"
    path.write_text(text)
    with pytest.raises(ConfigError):
        resolve_config(str(path))


SCHEDULE_FIELDS = st.fixed_dictionaries(
    {},
    optional={
        "version": st.one_of(st.integers(0, 2), st.text(max_size=2)),
        "blocks": st.one_of(
            st.lists(st.fixed_dictionaries({"op": st.sampled_from(["prune", "merge_mlerp", "bogus", 3]),
                                             "r": st.one_of(st.integers(-2, 40), st.text(max_size=2))}),
                     max_size=4),
            st.integers(), st.text(max_size=3)),
        "prop_attn": st.one_of(st.booleans(), st.text(max_size=3), st.integers()),
        "mlerp_norm": st.one_of(st.sampled_from(["max", "weighted_mean"]), st.integers()),
        "metric": st.one_of(st.sampled_from(["keys", "tokens"]), st.none()),
        "surprise": st.integers(),
    },
)  # fmt: skip


@FUZZ
@given(d=SCHEDULE_FIELDS)
def test_schedule_json(d):
    try:
        s = Schedule.from_json(json.dumps(d))
        s.validate(CONFIG.depth, CONFIG.num_tokens, CONFIG.num_prefix)
    except ScheduleError:
        return


@FUZZ
@given(data=st.data())
def test_profile_json(tmp_path, data):
    good = {
        "version": 1, "config": CONFIG.to_dict(), "num_images": 4, "r_profile": 2, "alphas": [0.5],
        "blocks": [{"block": i, "L_mlp_matched": 0.1, "L_mlp_random": 0.2, "L_block_matched": 0.1,
                    "L_block_random": 0.2, "cos_matched": 0.9, "cos_random": 0.1, "norm_mean": 1.0,
                    "norm_cv": 0.1, "avg_norm_ratio": 0.9} for i in range(3)],
    }  # fmt: skip
    key = data.draw(st.sampled_from([*good, "blocks.0", "blocks.0.L_mlp_matched"]))
    value = data.draw(BAD_VALUES)
    if key.startswith("blocks."):
        parts = key.split(".")
        target = good["blocks"][0]
        if len(parts) == 2:
            good["blocks"][0] = value
        else:
            target[parts[2]] = value
    else:
        good[key] = value
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(good))
    try:
        Profile.load(path).check_depth(CONFIG.depth)
    except UserError:
        return


@FUZZ
@given(data=st.data())
def test_damaged_idx_files(tmp_path, data):
    header = bytes([0, 0, 0x08, 3]) + b"".join(d.to_bytes(4, "big") for d in (4, 28, 28))
    raw = header + bytes(4 * 28 * 28)
    if data.draw(st.booleans(), label="gzip"):
        raw = gzip.compress(raw)
    path = tmp_path / "images-idx3-ubyte"
    path.write_bytes(_damage(raw, data))
    with contextlib.suppress(DataError):
        read_idx(path)


def test_files_of_the_wrong_kind(tmp_path):
    (tmp_path / "garbage.npz").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="not an .npz"):
        load.load_params(tmp_path / "garbage.npz", CONFIG)
    np.save(tmp_path / "one.npy", np.zeros(3))
    (tmp_path / "one.npy").rename(tmp_path / "one.npz")
    with pytest.raises(CheckpointError, match="one .npy array"):
        load.load_params(tmp_path / "one.npz", CONFIG)
    (tmp_path / "schedule.json").write_bytes(bytes(range(256)))
    with pytest.raises(ScheduleError, match="not text"):
        Schedule.from_json(tmp_path / "schedule.json")
    with pytest.raises(ScheduleError, match="version"):
        Schedule.from_dict({"version": 1.0, "blocks": []})


@pytest.mark.parametrize(
    "name,content,needle",
    [
        ("config.json", "[1]", "must be a JSON object"),
        ("config.json", '{"layer_norm_eps": "1e-5"}', "layer_norm_eps must be a number"),
        ("config.json", '{"layer_norm_eps": 1e39}', "layer_norm_eps must be a number"),
        ("config.json", '{"hidden_act": "swish"}', "hidden_act 'swish' is not supported"),
        ("preprocessor_config.json", '{"image_mean": ["a", "b", "c"], "image_std": [1, 1, 1]}', "match none"),
        ("preprocessor_config.json", '{"image_mean": [0.1, 0.2, 0.3], "image_std": [1, 1, 1]}', "match none"),
    ],
)  # fmt: skip
def test_bad_hugging_face_configs(tmp_path, name, content, needle):
    from tofu_jax.models.loading import format_numerics

    (tmp_path / name).write_text(content)
    with pytest.raises(ConfigError, match=needle):
        format_numerics("hf", tmp_path / "model.safetensors")


def test_train_state_that_is_not_one(tmp_path):
    import optax

    from tofu_jax.models.vit import init_params
    from tofu_jax.train import load_train_state, save_train_state

    params = init_params(CONFIG)
    opt = optax.adam(1e-3).init(params)
    np.savez(tmp_path / "state.npz", __step__=np.int64(3))
    (tmp_path / "empty").mkdir()
    for path in (tmp_path / "state.npz", tmp_path / "empty", tmp_path / "missing"):
        with pytest.raises(CheckpointError, match="not a tofu_jax train state"):
            load_train_state(path, params, opt)
    save_train_state(tmp_path / "other", {"w": np.zeros(2, np.float32)}, optax.sgd(1.0).init({}), 1, {})
    with pytest.raises(CheckpointError, match="another output directory"):
        load_train_state(tmp_path / "other", params, opt)


def test_google_npz_of_the_wrong_rank(tmp_path):
    np.savez(tmp_path / "scanned.npz", **{"Transformer/encoderblock/LayerNorm_0/scale": np.float32(1.0)})
    with pytest.raises(CheckpointError, match="wrong rank"):
        load.load_params(tmp_path / "scanned.npz", CONFIG)
    np.savez(tmp_path / "posemb.npz", pos_embedding=np.zeros(5, np.float32))
    with pytest.raises(CheckpointError, match="wrong rank"):
        load.load_params(tmp_path / "posemb.npz", CONFIG)


def test_idx_files_of_another_type(tmp_path):
    from tofu_jax.data.idx import load_split

    for stem, dims, code in (
        ("t10k-images-idx3-ubyte", (2, 28, 28), 0x0D),
        ("t10k-labels-idx1-ubyte", (2,), 0x08),
    ):
        header = bytes([0, 0, code, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims)
        item = 4 if code == 0x0D else 1
        (tmp_path / stem).write_bytes(header + bytes(item * int(np.prod(dims))))
    with pytest.raises(DataError, match="expected uint8"):
        load_split("test", tmp_path)
