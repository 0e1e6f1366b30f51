"""timm / Hugging Face state-dict conversion without the reference libraries (NumPy + safetensors only).

A canonical parameter tree is turned into a timm or HF state dict by the inverse transforms, written
as safetensors, and must load back unchanged; unknown keys, clashes and unreadable files must fail
with a CheckpointError that names them.
"""

from __future__ import annotations

import json
import sys

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save_file

from tofu_jax.checkpoints import load, torch_formats
from tofu_jax.checkpoints.common import CheckpointError, flatten
from tofu_jax.models.vit import ViTConfig

from .helpers import TINY, random_flat

ATT = "MultiHeadDotProductAttention_1"


def _lin(flat, name):
    return flat[name + "/kernel"].T, flat[name + "/bias"]


def _heads_in(kernel):  # (D, H, hd) -> torch (H*hd, D)
    return kernel.reshape(kernel.shape[0], -1).T


def _to_timm(flat: dict, depth: int) -> dict[str, np.ndarray]:
    sd = {
        "cls_token": flat["cls"],
        "pos_embed": flat["Transformer/posembed_input/pos_embedding"],
        "patch_embed.proj.weight": flat["embedding/kernel"].transpose(3, 2, 0, 1),
        "patch_embed.proj.bias": flat["embedding/bias"],
        "norm.weight": flat["Transformer/encoder_norm/scale"],
        "norm.bias": flat["Transformer/encoder_norm/bias"],
    }
    sd["head.weight"], sd["head.bias"] = _lin(flat, "head")
    if "dist" in flat:
        sd["dist_token"] = flat["dist"]
        sd["head_dist.weight"], sd["head_dist.bias"] = _lin(flat, "head_dist")
    for i in range(depth):
        b, t = f"Transformer/encoderblock_{i}/", f"blocks.{i}."
        qkv = [flat[f"{b}{ATT}/{n}/kernel"] for n in ("query", "key", "value")]
        sd[t + "attn.qkv.weight"] = np.concatenate([_heads_in(k) for k in qkv])
        sd[t + "attn.qkv.bias"] = np.concatenate(
            [flat[f"{b}{ATT}/{n}/bias"].reshape(-1) for n in ("query", "key", "value")]
        )
        out = flat[f"{b}{ATT}/out/kernel"]
        sd[t + "attn.proj.weight"] = out.reshape(-1, out.shape[-1]).T
        sd[t + "attn.proj.bias"] = flat[f"{b}{ATT}/out/bias"]
        for src, dst in (("LayerNorm_0", "norm1"), ("LayerNorm_2", "norm2")):
            sd[f"{t}{dst}.weight"], sd[f"{t}{dst}.bias"] = flat[f"{b}{src}/scale"], flat[f"{b}{src}/bias"]
        for src, dst in (("Dense_0", "fc1"), ("Dense_1", "fc2")):
            sd[f"{t}mlp.{dst}.weight"], sd[f"{t}mlp.{dst}.bias"] = _lin(flat, f"{b}MlpBlock_3/{src}")
    return sd


HF_V4 = {
    "query": "attention.attention.query",
    "key": "attention.attention.key",
    "value": "attention.attention.value",
    "out": "attention.output.dense",
    "Dense_0": "intermediate.dense",
    "Dense_1": "output.dense",
    "layer": "vit.encoder.layer",
}
HF_V5 = {
    "query": "attention.q_proj",
    "key": "attention.k_proj",
    "value": "attention.v_proj",
    "out": "attention.o_proj",
    "Dense_0": "mlp.fc1",
    "Dense_1": "mlp.fc2",
    "layer": "vit.layers",
}


def _to_hf(flat: dict, depth: int, names: dict) -> dict[str, np.ndarray]:
    e = "vit.embeddings."
    sd = {
        e + "cls_token": flat["cls"],
        e + "position_embeddings": flat["Transformer/posembed_input/pos_embedding"],
        e + "patch_embeddings.projection.weight": flat["embedding/kernel"].transpose(3, 2, 0, 1),
        e + "patch_embeddings.projection.bias": flat["embedding/bias"],
        "vit.layernorm.weight": flat["Transformer/encoder_norm/scale"],
        "vit.layernorm.bias": flat["Transformer/encoder_norm/bias"],
    }
    sd["classifier.weight"], sd["classifier.bias"] = _lin(flat, "head")
    for i in range(depth):
        b, t = f"Transformer/encoderblock_{i}/", f"{names['layer']}.{i}."
        for n in ("query", "key", "value"):
            sd[f"{t}{names[n]}.weight"] = _heads_in(flat[f"{b}{ATT}/{n}/kernel"])
            sd[f"{t}{names[n]}.bias"] = flat[f"{b}{ATT}/{n}/bias"].reshape(-1)
        out = flat[f"{b}{ATT}/out/kernel"]
        sd[f"{t}{names['out']}.weight"] = out.reshape(-1, out.shape[-1]).T
        sd[f"{t}{names['out']}.bias"] = flat[f"{b}{ATT}/out/bias"]
        for src, dst in (("LayerNorm_0", "layernorm_before"), ("LayerNorm_2", "layernorm_after")):
            sd[f"{t}{dst}.weight"], sd[f"{t}{dst}.bias"] = flat[f"{b}{src}/scale"], flat[f"{b}{src}/bias"]
        for n in ("Dense_0", "Dense_1"):
            sd[f"{t}{names[n]}.weight"], sd[f"{t}{names[n]}.bias"] = _lin(flat, f"{b}MlpBlock_3/{n}")
    return sd


def _save(sd, path):
    save_file({k: np.ascontiguousarray(v) for k, v in sd.items()}, str(path))
    return path


def _assert_same(params, flat):
    got = flatten(params)
    assert set(got) == set(flat)
    for k in flat:
        np.testing.assert_array_equal(np.asarray(got[k]), flat[k], err_msg=k)


@pytest.mark.parametrize("distilled", [False, True])
def test_timm_roundtrip(tmp_path, distilled):
    config = ViTConfig(**TINY, distilled=distilled)
    flat = random_flat(config)
    path = _save(_to_timm(flat, config.depth), tmp_path / "timm.safetensors")
    assert torch_formats.detect(torch_formats.load_state_dict(path)) == "timm"
    _assert_same(load.load_params(path, config), flat)


@pytest.mark.parametrize("names", [HF_V4, HF_V5], ids=["v4", "v5"])
def test_hf_roundtrip(tmp_path, names):
    config = ViTConfig(**TINY)
    flat = random_flat(config)
    path = _save(_to_hf(flat, config.depth, names), tmp_path / "hf.safetensors")
    assert torch_formats.detect(torch_formats.load_state_dict(path)) == "hf"
    _assert_same(load.load_params(path, config, fmt="hf"), flat)


def test_timm_posemb_without_prefix_rows_gets_zero_rows(tmp_path):
    config = ViTConfig(**TINY)
    flat = random_flat(config)
    sd = _to_timm(flat, config.depth)
    sd["pos_embed"] = sd["pos_embed"][:, 1:]  # timm no_embed_class=True
    params = flatten(load.load_params(_save(sd, tmp_path / "ne.safetensors"), config))
    pos = np.asarray(params["Transformer/posembed_input/pos_embedding"])
    np.testing.assert_array_equal(pos[:, 0], 0)
    np.testing.assert_array_equal(pos[:, 1:], sd["pos_embed"])


def test_unknown_keys_are_reported_not_dropped(tmp_path):
    config = ViTConfig(**TINY)
    sd = _to_timm(random_flat(config), config.depth)
    sd["blocks.0.mystery.gamma"] = np.ones(config.width, np.float32)
    sd["mystery_token"] = np.zeros((1, 4, config.width), np.float32)
    del sd["blocks.1.mlp.fc2.bias"]
    with pytest.raises(CheckpointError) as e:
        load.load_params(_save(sd, tmp_path / "x.safetensors"), config)
    msg = str(e.value)
    assert "blocks.0.mystery.gamma" in msg and "mystery_token" in msg
    assert "Transformer/encoderblock_1/MlpBlock_3/Dense_1/bias" in msg


def test_other_width_is_reported_as_misshaped(tmp_path):
    small = ViTConfig(**{**TINY, "width": 48, "mlp_dim": 96})
    sd = _to_timm(random_flat(small), small.depth)
    with pytest.raises(CheckpointError, match="mis-shaped") as e:
        load.load_params(_save(sd, tmp_path / "w.safetensors"), ViTConfig(**TINY))
    assert f"{ATT}/query/kernel: checkpoint (48, 4, 12) vs model (64, 4, 16)" in str(e.value)


def test_two_names_for_one_parameter_are_refused(tmp_path):
    config = ViTConfig(**TINY)
    flat = random_flat(config)
    sd = _to_hf(flat, config.depth, HF_V4)
    sd["vit.layers.0.attention.q_proj.weight"] = sd["vit.encoder.layer.0.attention.attention.query.weight"]
    with pytest.raises(CheckpointError, match="several keys map to one parameter") as e:
        load.load_params(_save(sd, tmp_path / "dup.safetensors"), config)
    assert "vit.layers.0.attention.q_proj.weight" in str(e.value)


def test_layout_detection_errors(tmp_path):
    config = ViTConfig(**TINY)
    path = _save({"foo.weight": np.zeros(3, np.float32)}, tmp_path / "foo.safetensors")
    with pytest.raises(CheckpointError, match="cannot recognise the layout.*foo.weight"):
        load.load_params(path, config)
    timm_path = _save(_to_timm(random_flat(config), config.depth), tmp_path / "timm.safetensors")
    with pytest.raises(CheckpointError, match="no key of the hf layout.*looks like timm"):
        load.load_params(timm_path, config, fmt="hf")
    with pytest.raises(CheckpointError, match="needs the model's ViTConfig"):
        torch_formats.read(timm_path, "timm", None)


def test_bfloat16_safetensors(tmp_path):
    """safetensors.numpy refuses BF16; the loader parses the file itself and widens to float32."""
    values = np.arange(6, dtype=np.float32).reshape(2, 3) / 4
    raw = values.astype(ml_dtypes.bfloat16).tobytes()
    header = json.dumps({"w": {"dtype": "BF16", "shape": [2, 3], "data_offsets": [0, len(raw)]}}).encode()
    path = tmp_path / "bf16.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header + raw)
    state = torch_formats.load_state_dict(path)
    assert state["w"].dtype == np.float32
    np.testing.assert_array_equal(state["w"], values)


def test_unreadable_files(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        torch_formats.load_state_dict(bad)
    with pytest.raises(CheckpointError, match="cannot tell the format"):
        (tmp_path / "w.h5").write_bytes(b"")
        torch_formats.load_state_dict(tmp_path / "w.h5")
    with pytest.raises(CheckpointError, match="not found"):
        torch_formats.load_state_dict(tmp_path / "missing.pth")


def test_pth_without_torch_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
    (tmp_path / "m.pth").write_bytes(b"\0")
    with pytest.raises(CheckpointError, match="needs PyTorch"):
        torch_formats.load_state_dict(tmp_path / "m.pth")


def test_pth_is_read_with_weights_only(tmp_path):
    torch = pytest.importorskip("torch")
    import argparse

    config = ViTConfig(**TINY)
    flat = random_flat(config)
    sd = {k: torch.from_numpy(v) for k, v in _to_timm(flat, config.depth).items()}
    torch.save({"state_dict": sd, "epoch": 1}, tmp_path / "ok.pth")
    _assert_same(load.load_params(tmp_path / "ok.pth", config), flat)
    # A pickled object that weights_only=True refuses: never executed, reported instead.
    torch.save({"state_dict": sd, "args": argparse.Namespace(lr=1)}, tmp_path / "pickled.pth")
    with pytest.raises(CheckpointError, match="weights_only"):
        load.load_params(tmp_path / "pickled.pth", config)
    torch.save({k: v.to(torch.bfloat16) for k, v in sd.items()}, tmp_path / "bf16.pth")
    params = flatten(load.load_params(tmp_path / "bf16.pth", config))
    np.testing.assert_allclose(np.asarray(params["cls"]), flat["cls"], rtol=1e-2)
