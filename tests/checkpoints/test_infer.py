"""``--model auto``: the architecture from a checkpoint's shapes, and the errors when something cannot be
inferred (model descriptions and timm names' recipes: tests/models/test_loading.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tofu_jax.checkpoints import google
from tofu_jax.checkpoints.common import CheckpointError, unflatten
from tofu_jax.models.loading import load_model
from tofu_jax.models.vit import ViTConfig

from .helpers import TINY, random_flat

GOOGLE_VARIANTS = {
    "token": dict(),
    "gap_no_cls": dict(classifier="gap", cls_token=False),
    "distilled": dict(distilled=True),
    "pre_logits": dict(representation_size=32),
    "map_head": dict(classifier="map", cls_token=False),
    "registers_layer_scale_norm_pre": dict(num_registers=2, layer_scale=True, norm_pre=True),
}


@pytest.mark.parametrize("variant", sorted(GOOGLE_VARIANTS))
def test_google_npz_architecture_from_shapes(tmp_path, variant):
    config = ViTConfig(**TINY, **GOOGLE_VARIANTS[variant])
    flat = random_flat(config)
    google.save_npz(tmp_path / "m.npz", unflatten(flat))
    auto, params = load_model(tmp_path / "m.npz")  # no --model: auto
    architecture = config.replace(
        input_norm="inception", resize="square", crop_pct=1.0, interpolation="bilinear", antialias=False
    )
    assert auto == architecture
    np.testing.assert_array_equal(params["embedding"]["kernel"], flat["embedding/kernel"])


def test_overrides_win_over_what_the_checkpoint_says(tmp_path):
    google.save_npz(tmp_path / "m.npz", unflatten(random_flat(ViTConfig(**TINY))))
    config, params = load_model(
        tmp_path / "m.npz", image_size=48, gelu_approximate=False, crop_pct=0.875, interpolation="bicubic"
    )
    assert (config.image_size, config.gelu_approximate, config.crop_pct, config.interpolation) == (
        48, False, 0.875, "bicubic",
    )  # fmt: skip
    assert params["Transformer"]["posembed_input"]["pos_embedding"].shape == (1, 1 + 36, TINY["width"])


BROKEN = [  # (keys dropped, keys replaced, the error says)
    (["head/kernel", "head/bias"], {}, "has no classification head: pass --num-classes N --reset-head"),
    ([], {"Transformer/posembed_input/pos_embedding": np.zeros((1, 15, 64), np.float32)},
     "the position embedding has 15 rows, which is no square grid of patches with or without the 1 prefix"),
    (["embedding/kernel"], {}, "cannot read the architecture of"),
]  # fmt: skip


@pytest.mark.parametrize("dropped,replaced,needle", BROKEN)
def test_what_cannot_be_inferred_is_named(tmp_path, dropped, replaced, needle):
    flat = {k: v for k, v in random_flat(ViTConfig(**TINY)).items() if k not in dropped}
    flat.update(replaced)
    google.save_npz(tmp_path / "m.npz", unflatten(flat))
    with pytest.raises(CheckpointError) as e:
        load_model(tmp_path / "m.npz")
    assert needle in str(e.value)


def test_timm_width_without_a_standard_size_asks_for_num_heads(timm, torch, tmp_path):
    from safetensors.torch import save_file

    model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=64, depth=1,
                              num_heads=4, num_classes=10)  # fmt: skip
    save_file(model.state_dict(), str(tmp_path / "m.safetensors"))
    with pytest.raises(CheckpointError, match="timm checkpoint of width 64 .*pass --num-heads"):
        load_model(tmp_path / "m.safetensors")
    assert load_model(tmp_path / "m.safetensors", num_heads=4)[0].num_heads == 4
    with pytest.raises(CheckpointError, match="QuickGELU"):
        load_model(tmp_path / "m.safetensors", "vit_base_patch16_clip_quickgelu_224.openai", num_heads=4)
    clip = load_model(tmp_path / "m.safetensors", "vit_base_patch16_clip_224.laion2b", num_heads=4)[0]
    assert clip.layernorm_eps == 1e-5 and clip.input_norm is None  # family unknown: --input-norm asked


def test_hf_weights_without_config_json_ask_for_num_heads(transformers, torch, tmp_path):
    from safetensors.torch import save_file

    config = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=1,
                                    num_attention_heads=4, intermediate_size=128, num_labels=10)  # fmt: skip
    save_file(transformers.ViTForImageClassification(config).state_dict(), str(tmp_path / "m.safetensors"))
    with pytest.raises(CheckpointError, match="needs its config.json beside it .*--num-heads"):
        load_model(tmp_path / "m.safetensors")
    assert load_model(tmp_path / "m.safetensors", num_heads=4)[0].layernorm_eps == 1e-12
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "dinov2", "num_attention_heads": 4}))
    with pytest.raises(CheckpointError, match="model_type 'dinov2' is not supported; supported: vit, deit"):
        load_model(tmp_path / "m.safetensors")
