"""Build ``(config, params)`` from a checkpoint file plus a model description.

Numerics that the weights cannot show (the GELU form, the LayerNorm epsilon, the input
normalisation) come from the checkpoint's format unless the model description or an override states
them: Google/big_vision checkpoints use tanh GELU, eps 1e-6 and inputs in [-1, 1]; timm uses exact GELU
and eps 1e-6 and does not record its normalisation (the CLI then asks for ``--input-norm``); Hugging
Face uses what its ``config.json`` (``hidden_act``, ``layer_norm_eps``; exact GELU and 1e-12 when
absent, its library defaults) and ``preprocessor_config.json`` (``image_mean``/``image_std``) say.
A preset such as ``B/16`` states only the architecture's shape.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from tofu_jax.assets import BUNDLED_CHECKPOINT, bundled_card
from tofu_jax.checkpoints import google, torch_formats
from tofu_jax.checkpoints.common import CheckpointError
from tofu_jax.checkpoints.load import FORMATS, adapt
from tofu_jax.data.preprocess import INPUT_NORMS, input_norm_from_stats
from tofu_jax.errors import ConfigError
from tofu_jax.models.vit import ViTConfig, preset

_HF_GELU = {"gelu": False, "gelu_python": False, "gelu_new": True, "gelu_pytorch_tanh": True}


def _read_json(path: Path, what: str):
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"cannot read {what} {path}: {e}") from None


def _described_fields(model: str | None) -> tuple[dict, set[str]]:
    """``(config fields, the fields stated explicitly)`` for a model description."""
    if model is None:
        fields = bundled_card()["config"]
        return dict(fields), set(fields)
    path = Path(model)
    if path.suffix == ".json" or path.exists():
        d = _read_json(path, "model config")
        fields = d.get("config", d) if isinstance(d, dict) else d
        if not isinstance(fields, dict):
            raise ConfigError(
                f"model config {path} must be a JSON object (a config, or a card with 'config')"
            )
        return dict(fields), set(fields)
    return preset(model).to_dict(), set()


def _numbers(values) -> bool:
    return isinstance(values, list) and all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in values
    )


def format_numerics(fmt: str, checkpoint: str | Path | None = None) -> dict:
    """GELU form, LayerNorm epsilon and (where known) input normalisation of a ``fmt`` checkpoint."""
    if fmt == "google":
        return {"gelu_approximate": True, "layernorm_eps": 1e-6, "input_norm": "inception"}
    if fmt == "timm":
        return {"gelu_approximate": False, "layernorm_eps": 1e-6}
    if fmt != "hf":
        raise ConfigError(f"unknown checkpoint format {fmt!r}; choose from google, timm, hf")
    numerics = {"gelu_approximate": False, "layernorm_eps": 1e-12}
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
    if cfg_path is not None and cfg_path.is_file():
        cfg = _read_json(cfg_path, "Hugging Face config")
        if not isinstance(cfg, dict):
            raise ConfigError(f"{cfg_path} must be a JSON object, got {type(cfg).__name__}")
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

    ``fmt="auto"`` reads ``.npz`` as Google and anything else as timm / Hugging Face, told apart by
    the key names.
    """
    if fmt not in FORMATS:
        raise CheckpointError(f"unknown checkpoint format {fmt!r}; choose from {', '.join(FORMATS)}")
    path = Path(checkpoint) if checkpoint is not None else BUNDLED_CHECKPOINT
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} not found")
    if fmt == "google" or (fmt == "auto" and path.suffix == ".npz"):
        flat = google.read_npz(path)
        config = resolve_config(model, fmt="google", checkpoint=path, **overrides)
    else:
        state = torch_formats.load_state_dict(path)
        layout = torch_formats.detect(state) if fmt == "auto" else fmt
        if layout is None:
            sample = ", ".join(sorted(state)[:8])
            raise CheckpointError(f"{path}: cannot recognise the layout (neither timm nor Hugging Face ViT); "
                                  f"keys start with: {sample}")  # fmt: skip
        config = resolve_config(model, fmt=layout, checkpoint=path, **overrides)
        flat = torch_formats.convert(state, layout, config, source=str(path))
    return config, adapt(flat, config, reset_head=reset_head, source=str(path))
