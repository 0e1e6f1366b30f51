"""Model descriptions (a file, a preset, a timm name, ``auto``) and timm names' recipes against timm's own
pretrained configs. The architecture read from a checkpoint's shapes: tests/checkpoints/test_infer.py."""

from __future__ import annotations

import json

import pytest

from tofu_jax.errors import ConfigError
from tofu_jax.models.loading import TIMM_RECIPES, is_timm_name, load_model, resolve_config


def test_model_descriptions_are_checked():
    assert is_timm_name("vit_base_patch16_224.augreg2_in21k_ft_in1k") and is_timm_name(
        "deit3_small_patch16_224"
    )
    assert not is_timm_name("B/16") and not is_timm_name("card.json")
    with pytest.raises(ConfigError, match="reads the architecture from a checkpoint: pass --checkpoint"):
        resolve_config("auto")
    with pytest.raises(ConfigError, match="is no file, preset or timm model name"):
        load_model(None, "vitbase")
    with pytest.raises(
        ConfigError, match="is a timm model name but .* is a Google checkpoint; use --model auto"
    ):
        load_model(None, "vit_tiny_patch16_224")
    bundled = load_model()[0]
    assert load_model(None, "auto")[0] == bundled  # the bundled npz read by shapes: its card's config


def test_timm_family_recipes_match_timm_pretrained_configs(timm):
    """Every timm name a :data:`TIMM_RECIPES` row covers gets timm's mean/std, crop and filter."""
    from tofu_jax.data.transforms import input_norm_from_stats
    from tofu_jax.models.loading import _timm_name_fields

    checked = 0
    for name in timm.list_pretrained():
        arch, _, tag = name.partition(".")
        if not any(arch.startswith(a) and tag.startswith(t) for a, t, *_ in TIMM_RECIPES):
            continue
        cfg = timm.models.get_pretrained_cfg(name)
        if "_clip_" in arch or "quickgelu" in arch or cfg.crop_mode != "center":
            continue
        fields = _timm_name_fields(name, None, name)
        want = {"input_norm": input_norm_from_stats(cfg.mean, cfg.std), "crop_pct": cfg.crop_pct}
        assert {k: fields[k] for k in want} == want, name
        assert cfg.interpolation == "bicubic", name
        checked += 1
    assert checked >= 40
    default = _timm_name_fields("vit_base_patch16_224", None, "x")  # no tag: timm's default (augreg2)
    assert default == {"input_norm": "inception", "crop_pct": 0.9}


def test_timm_config_json_pretrained_cfg_is_used(tmp_path):
    from tofu_jax.models.loading import _timm_config_json, _timm_name_fields

    pretrained = {
        "tag": "lvd142m", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "crop_pct": 1.0,
        "interpolation": "bicubic", "crop_mode": "squash",
    }  # fmt: skip
    cfg = {"architecture": "vit_small_patch14_dinov2", "pretrained_cfg": pretrained}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    name, cfg = _timm_config_json(tmp_path / "model.safetensors")
    assert name == "vit_small_patch14_dinov2.lvd142m"
    assert _timm_name_fields(name, cfg, "x") == dict(
        input_norm="imagenet", interpolation="bicubic", crop_pct=1.0, resize="square"
    )
    cfg["mean"] = [0.1, 0.2, 0.3]
    with pytest.raises(ConfigError, match=r"match none of the input normalisations .*pass --input-norm"):
        _timm_name_fields(name, cfg, "x")
