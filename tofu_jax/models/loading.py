"""Build (config, params) from a checkpoint file plus a model description."""

from __future__ import annotations

import json
from pathlib import Path

from tofu_jax.assets import BUNDLED_CHECKPOINT, bundled_card
from tofu_jax.checkpoints.load import load_params
from tofu_jax.models.vit import ViTConfig, preset


def resolve_config(model: str | None, **overrides) -> ViTConfig:
    """``model``: None (bundled card), a JSON file (card with ``config`` or a config dict) or a
    preset like ``B/16``. ``overrides`` (None values ignored) replace config fields."""
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if model is None:
        return ViTConfig.from_dict(bundled_card()["config"]).replace(**overrides)
    path = Path(model)
    if path.suffix == ".json" or path.exists():
        try:
            d = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"cannot read model config {model}: {e}") from None
        return ViTConfig.from_dict(d.get("config", d)).replace(**overrides)
    return preset(model, **overrides)


def load_model(
    checkpoint: str | Path | None = None,
    model: str | None = None,
    *,
    fmt: str = "auto",
    reset_head: bool = False,
    **overrides,
) -> tuple[ViTConfig, dict]:
    """``(config, params)``; with no arguments, the bundled Fashion-MNIST model."""
    config = resolve_config(model, **overrides)
    path = checkpoint if checkpoint is not None else BUNDLED_CHECKPOINT
    return config, load_params(path, config, fmt=fmt, reset_head=reset_head)
