"""Build ``(config, params)`` from a checkpoint file plus a model description.

The description is ``auto`` (the default with a checkpoint: the architecture from the checkpoint's
shapes, :mod:`tofu_jax.checkpoints.infer`), a timm model name (``auto`` plus what the name tells), a
JSON card/config, or a preset such as ``B/16`` (the architecture's shape only).

Numerics and the input recipe that the weights cannot show (the GELU form, the LayerNorm epsilon, the
input normalisation, resize/crop/interpolation) come from the checkpoint's format unless the model
description or an override states them: Google/big_vision checkpoints use tanh GELU, eps 1e-6, inputs
in [-1, 1] resized to the model's size with TensorFlow's bilinear resize; timm uses exact GELU and eps
1e-6 (1e-5 for CLIP towers) and the recipe of its ``pretrained_cfg`` (from timm's ``config.json``
beside the weights, else the model name's family, else timm's defaults with the normalisation unknown,
so the CLI asks for ``--input-norm``); Hugging Face uses what its ``config.json`` (``hidden_act``,
``layer_norm_eps``; exact GELU and 1e-12 when absent, its library defaults) and
``preprocessor_config.json`` (mean/std, size, crop, resample) say.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from tofu_jax.assets import BUNDLED_CHECKPOINT, bundled_card
from tofu_jax.checkpoints import google, infer, torch_formats
from tofu_jax.checkpoints.common import CheckpointError
from tofu_jax.checkpoints.load import FORMATS, adapt
from tofu_jax.data.transforms import INPUT_NORMS, input_norm_from_stats
from tofu_jax.errors import ConfigError
from tofu_jax.models.vit import PRESETS, ViTConfig, preset

_HF_GELU = {"gelu": False, "gelu_python": False, "gelu_new": True, "gelu_pytorch_tanh": True}
_HF_MODEL_TYPES = ("vit", "deit")
AUTO = "auto"
_TIMM_NAME = re.compile(r"^[a-z][a-z0-9]*_[a-z0-9_]*patch\d+[a-z0-9_]*(\.[A-Za-z0-9_]+)?$")
_PIL_RESAMPLE = {2: "bilinear", 3: "bicubic"}  # PIL's Image.Resampling codes in HF processor configs
# timm's pretrained_cfg for the families most often used as bare weights, without timm's config.json:
# (architecture prefix, tag prefix, input_norm, crop_pct below 384 px; 1.0 from 384 px). All use
# bicubic resizing of the shorter side and a centre crop. tests/checkpoints/test_infer.py checks every
# matching name against timm.
TIMM_RECIPES = (
    ("vit_", "augreg", "inception", 0.9),
    ("vit_", "orig_in21k", "inception", 0.9),
    ("vit_", "sam_in1k", "inception", 0.9),
    ("deit_", "fb_in1k", "imagenet", 0.9),
    ("deit3_", "fb_in1k", "imagenet", 0.9),
    ("deit3_", "fb_in22k_ft_in1k", "imagenet", 1.0),
    ("vit_", "lvd142m", "imagenet", 1.0),
    ("vit_", "mae", "imagenet", 0.9),
)
# Tags timm loads for a name given without one, for the families above.
_TIMM_DEFAULT_TAGS = (("deit3_", "fb_in1k"), ("deit_", "fb_in1k"), ("vit_", "augreg"))
_TIMM_OTHER_FAMILIES = ("clip", "siglip", "dino", "mae", "eva", "sam", "reg", "gap", "so400m", "pe_")


def _read_json(path: Path, what: str):
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"cannot read {what} {path}: {e}") from None


def is_timm_name(model: str | None) -> bool:
    """A timm model name such as ``vit_base_patch16_224.augreg2_in21k_ft_in1k``."""
    return isinstance(model, str) and bool(_TIMM_NAME.match(model)) and not Path(model).exists()


def _described_fields(model: str | None) -> tuple[dict, set[str]]:
    """``(config fields, the fields stated explicitly)`` for a model description."""
    if model is None:
        fields = bundled_card()["config"]
        return dict(fields), set(fields)
    if model == AUTO or is_timm_name(model):
        raise ConfigError(f"--model {model} reads the architecture from a checkpoint: pass --checkpoint")
    path = Path(model)
    if path.suffix == ".json" or path.exists():
        d = _read_json(path, "model config")
        fields = d.get("config", d) if isinstance(d, dict) else d
        if not isinstance(fields, dict):
            raise ConfigError(
                f"model config {path} must be a JSON object (a config, or a card with 'config')"
            )
        return dict(fields), set(fields)
    if model not in PRESETS and "/" not in model:
        raise ConfigError(
            f"--model {model!r} is no file, preset or timm model name; use auto (the default with a "
            f"checkpoint), a JSON card/config, a preset ({', '.join(PRESETS)}) or a timm name such as "
            "vit_base_patch16_224.augreg2_in21k_ft_in1k"
        )
    return preset(model).to_dict(), set()


def _numbers(values) -> bool:
    return isinstance(values, list) and all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in values
    )


def format_numerics(fmt: str, checkpoint: str | Path | None = None) -> dict:
    """GELU form, LayerNorm epsilon and (where known) input normalisation of a ``fmt`` checkpoint."""
    if fmt == "google":  # big_vision / vision_transformer evaluation: tf.image.resize to the model size
        return {
            "gelu_approximate": True, "layernorm_eps": 1e-6, "input_norm": "inception",
            "resize": "square", "crop_pct": 1.0, "interpolation": "bilinear", "antialias": False,
        }  # fmt: skip
    if fmt == "timm":  # timm's default pretrained_cfg (its _cfg); the normalisation varies by family
        return {
            "gelu_approximate": False, "layernorm_eps": 1e-6,
            "resize": "shorter", "crop_pct": 0.9, "interpolation": "bicubic", "antialias": True,
        }  # fmt: skip
    if fmt != "hf":
        raise ConfigError(f"unknown checkpoint format {fmt!r}; choose from google, timm, hf")
    # ViTImageProcessor's defaults: both sides to the model size, bilinear, no crop
    numerics = {
        "gelu_approximate": False, "layernorm_eps": 1e-12,
        "resize": "square", "crop_pct": 1.0, "interpolation": "bilinear", "antialias": True,
    }  # fmt: skip
    path = Path(checkpoint) if checkpoint is not None else None
    folder = None if path is None else (path if path.is_dir() else path.parent)
    cfg_path = None if folder is None else folder / "config.json"
    pre_path = None if folder is None else folder / "preprocessor_config.json"
    if pre_path is not None and pre_path.is_file():
        pre = _read_json(pre_path, "Hugging Face image-processor config")
        mean, std = (pre.get("image_mean"), pre.get("image_std")) if isinstance(pre, dict) else (None, None)
        name = input_norm_from_stats(mean, std) if _numbers(mean) and _numbers(std) else None
        if name is None:
            raise ConfigError(
                f"{pre_path}: image_mean {mean} / image_std {std} match none of the input "
                f"normalisations ({', '.join(INPUT_NORMS)}); pass input_norm explicitly"
            )
        numerics["input_norm"] = name
        numerics.update(_hf_geometry(pre, pre_path))
    if cfg_path is not None and cfg_path.is_file():
        cfg = _read_json(cfg_path, "Hugging Face config")
        if not isinstance(cfg, dict):
            raise ConfigError(f"{cfg_path} must be a JSON object, got {type(cfg).__name__}")
        model_type = cfg.get("model_type", "vit")
        if model_type not in _HF_MODEL_TYPES:
            raise CheckpointError(
                f"{cfg_path}: Hugging Face model_type {model_type!r} is not supported; supported: "
                f"{', '.join(_HF_MODEL_TYPES)} (ViTForImageClassification, DeiT with or without teacher)"
            )
        act = cfg.get("hidden_act", "gelu")
        if not isinstance(act, str) or act not in _HF_GELU:
            raise ConfigError(
                f"{cfg_path}: hidden_act {act!r} is not supported; supported: {sorted(_HF_GELU)}"
            )
        numerics["gelu_approximate"] = _HF_GELU[act]
        eps = cfg.get("layer_norm_eps", 1e-12)
        if not _numbers([eps]) or not 0 < eps < 1:
            raise ConfigError(f"{cfg_path}: layer_norm_eps must be a number in (0, 1), got {eps!r}")
        numerics["layernorm_eps"] = float(eps)
    return numerics


def _hf_size(value, key: str, path: Path) -> tuple[int, str]:
    """``(pixels, resize mode)`` of an image-processor ``size`` / ``crop_size`` entry."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value, "square"
    if isinstance(value, dict) and "shortest_edge" in value:
        return value["shortest_edge"], "shorter"
    if isinstance(value, dict) and {"height", "width"} <= set(value) and value["height"] == value["width"]:
        return value["height"], "square"
    raise ConfigError(
        f"{path}: {key} {value!r} is not supported (a square size or shortest_edge); pass --crop-pct "
        "and --resize to state the recipe"
    )


def _hf_geometry(pre, path: Path) -> dict:
    """Resize mode, crop fraction and interpolation of a Hugging Face image-processor config."""
    resample = pre.get("resample", 2)
    if resample not in _PIL_RESAMPLE:
        raise ConfigError(
            f"{path}: resample {resample!r} is not supported (2 bilinear, 3 bicubic); pass --interpolation"
        )
    out = {"interpolation": _PIL_RESAMPLE[resample], "crop_pct": 1.0, "resize": "square"}
    if pre.get("do_resize", True) and "size" in pre:
        size, out["resize"] = _hf_size(pre["size"], "size", path)
        if pre.get("do_center_crop") and "crop_size" in pre:
            crop = _hf_size(pre["crop_size"], "crop_size", path)[0]
            if not 0 < crop <= size:
                raise ConfigError(f"{path}: crop_size {crop} is larger than size {size}")
            out["crop_pct"] = crop / size
    return out


def _timm_name_fields(name: str, pretrained_cfg: dict | None, source: str) -> dict:
    """Numerics and input recipe of a timm model: its ``pretrained_cfg`` (timm's ``config.json``), else
    the family of its name (:data:`TIMM_RECIPES`), else nothing (timm's defaults apply)."""
    arch, _, tag = name.partition(".")
    fields: dict = {}
    if "quickgelu" in arch:
        raise CheckpointError(
            f"{source}: unsupported timm architecture: QuickGELU activation ({arch}); tofu_jax's MLP has "
            "erf or tanh GELU"
        )
    if "_clip_" in arch:
        fields["layernorm_eps"] = 1e-5  # timm builds CLIP towers with LayerNorm(eps=1e-5)
    if pretrained_cfg is not None:
        return {**fields, **_timm_pretrained_cfg(pretrained_cfg, source)}
    if not tag and not any(f in arch for f in _TIMM_OTHER_FAMILIES):
        tag = next((t for prefix, t in _TIMM_DEFAULT_TAGS if arch.startswith(prefix)), "")
    size = re.search(r"_(\d+)$", arch)
    for arch_prefix, tag_prefix, input_norm, crop_pct in TIMM_RECIPES:
        if arch.startswith(arch_prefix) and tag.startswith(tag_prefix):
            large = size is not None and int(size.group(1)) >= 384
            return {**fields, "input_norm": input_norm, "crop_pct": 1.0 if large else crop_pct}
    return fields


def _timm_pretrained_cfg(cfg, source: str) -> dict:
    if not isinstance(cfg, dict):
        raise ConfigError(f"{source}: timm pretrained_cfg must be a JSON object, got {type(cfg).__name__}")
    mean, std = cfg.get("mean"), cfg.get("std")
    name = input_norm_from_stats(mean, std) if _numbers(mean) and _numbers(std) else None
    if name is None:
        raise ConfigError(
            f"{source}: timm pretrained_cfg mean {mean} / std {std} match none of the input "
            f"normalisations ({', '.join(INPUT_NORMS)}); pass --input-norm"
        )
    interpolation = cfg.get("interpolation", "bicubic")
    crop_mode = cfg.get("crop_mode", "center")
    crop_pct = cfg.get("crop_pct", 0.9)
    if interpolation not in ("bilinear", "bicubic") or crop_mode not in ("center", "squash"):
        raise ConfigError(
            f"{source}: timm pretrained_cfg interpolation {interpolation!r} / crop_mode {crop_mode!r} is "
            "not supported (bilinear or bicubic; center or squash); pass --interpolation and --resize"
        )
    if not _numbers([crop_pct]) or not 0 < crop_pct <= 1:
        raise ConfigError(f"{source}: timm pretrained_cfg crop_pct must be in (0, 1], got {crop_pct!r}")
    return {
        "input_norm": name,
        "interpolation": interpolation,
        "crop_pct": float(crop_pct),
        "resize": "shorter" if crop_mode == "center" else "square",
    }


def _timm_config_json(path: Path) -> tuple[str | None, dict | None]:
    """``(model name, pretrained_cfg)`` from timm's ``config.json`` beside the weights, if there is one."""
    folder = path if path.is_dir() else path.parent
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        return None, None
    cfg = _read_json(cfg_path, "timm config")
    if not isinstance(cfg, dict) or not isinstance(cfg.get("architecture"), str):
        return None, None  # not timm's (e.g. a Hugging Face config.json)
    pretrained = cfg.get("pretrained_cfg")
    tag = pretrained.get("tag") if isinstance(pretrained, dict) else None
    name = cfg["architecture"] + (f".{tag}" if isinstance(tag, str) and tag else "")
    return name, pretrained if isinstance(pretrained, dict) else None


def auto_config(shapes: dict, fmt: str, checkpoint: Path, name: str | None, overrides: dict) -> ViTConfig:
    """The config of a checkpoint from its canonical ``shapes``, format and (timm) model name."""
    source = str(checkpoint)
    fields = infer.shape_fields(shapes, source)
    fields.update(format_numerics(fmt, checkpoint))
    if fmt == "timm":
        json_name, pretrained_cfg = _timm_config_json(checkpoint)
        name = name or json_name
        if "num_heads" not in overrides:
            fields["num_heads"] = infer.timm_heads(fields["width"], source)
        if name is not None:
            fields.update(_timm_name_fields(name, pretrained_cfg, source))
    elif fmt == "hf":
        fields.update(_hf_architecture(checkpoint, overrides))
    if "num_classes" not in fields and "num_classes" not in overrides:
        raise CheckpointError(
            f"{source} has no classification head: pass --num-classes N --reset-head for a new head"
        )
    fields.update(overrides)
    return ViTConfig.from_dict(fields)


def _hf_architecture(checkpoint: Path, overrides: dict) -> dict:
    """Head count (and what else shapes cannot say) from a Hugging Face ``config.json``."""
    folder = checkpoint if checkpoint.is_dir() else checkpoint.parent
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        if "num_heads" in overrides:
            return {}
        raise CheckpointError(
            f"{checkpoint}: a Hugging Face checkpoint needs its config.json beside it for the number of "
            "attention heads (or pass --num-heads)"
        )
    cfg = _read_json(cfg_path, "Hugging Face config")
    heads = cfg.get("num_attention_heads") if isinstance(cfg, dict) else None
    if not isinstance(heads, int) or isinstance(heads, bool) or heads < 1:
        raise ConfigError(f"{cfg_path}: num_attention_heads must be a positive integer, got {heads!r}")
    return {"num_heads": heads}


def resolve_config(model: str | None, *, fmt: str | None = None, checkpoint=None, **overrides) -> ViTConfig:
    """The config for a model description.

    Args:
      model: None (the bundled card), a JSON file (a card with ``config`` or a config dict) or a
        preset like ``B/16``.
      fmt: the checkpoint's format (``google``, ``timm``, ``hf``); fills in the GELU form and LayerNorm
        epsilon that ``model`` does not state.
      checkpoint: the checkpoint path (Hugging Face: its ``config.json`` is read from beside it).
      overrides: config fields to replace (None values ignored).
    """
    overrides = {k: v for k, v in overrides.items() if v is not None}
    fields, stated = _described_fields(model)
    if fmt is not None:
        for key, value in format_numerics(fmt, checkpoint).items():
            if key not in stated or fields.get(key) is None:  # input_norm null: unknown
                fields[key] = value
    fields.update(overrides)
    return ViTConfig.from_dict(fields)


def load_model(
    checkpoint: str | Path | None = None,
    model: str | None = None,
    *,
    fmt: str = "auto",
    reset_head: bool = False,
    **overrides,
) -> tuple[ViTConfig, dict]:
    """``(config, params)``; with no arguments, the bundled Fashion-MNIST model.

    ``model`` is a description for :func:`resolve_config`, ``"auto"`` (the default when a checkpoint
    is given: the architecture read from the checkpoint) or a timm model name (auto, plus the name's
    numerics and input recipe). ``fmt="auto"`` reads ``.npz`` as Google and anything else as timm /
    Hugging Face, told apart by the key names.
    """
    if fmt not in FORMATS:
        raise CheckpointError(f"unknown checkpoint format {fmt!r}; choose from {', '.join(FORMATS)}")
    path = Path(checkpoint) if checkpoint is not None else BUNDLED_CHECKPOINT
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} not found")
    if model is None and checkpoint is not None:
        model = AUTO
    timm_name = model if is_timm_name(model) else None
    auto = model == AUTO or timm_name is not None
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if fmt == "google" or (fmt == "auto" and path.suffix == ".npz"):
        flat = google.read_npz(path)
        if timm_name is not None:
            raise ConfigError(
                f"--model {timm_name} is a timm model name but {path} is a Google checkpoint; use "
                "--model auto"
            )
        if auto:
            shapes = {k: tuple(v.shape) for k, v in flat.items()}
            config = auto_config(shapes, "google", path, None, overrides)
        else:
            config = resolve_config(model, fmt="google", checkpoint=path, **overrides)
    else:
        state = torch_formats.load_state_dict(path)
        layout = torch_formats.detect(state) if fmt == "auto" else fmt
        if layout is None:
            sample = ", ".join(sorted(state)[:8])
            raise CheckpointError(f"{path}: cannot recognise the layout (neither timm nor Hugging Face ViT); "
                                  f"keys start with: {sample}")  # fmt: skip
        if timm_name is not None and layout != "timm":
            raise ConfigError(
                f"--model {timm_name} is a timm model name but {path} is a {layout} checkpoint; use "
                "--model auto"
            )
        if auto:
            shapes = torch_formats.canonical_shapes(state, layout, str(path))
            config = auto_config(shapes, layout, path, timm_name, overrides)
        else:
            config = resolve_config(model, fmt=layout, checkpoint=path, **overrides)
        flat = torch_formats.convert(state, layout, config, source=str(path))
    return config, adapt(flat, config, reset_head=reset_head, source=str(path))
