"""Flax models that compose the token-reduction ops."""

from tofu_jax.models.vit import PRESETS, ViT, ViTConfig, init_params, make_apply, preset

__all__ = ["PRESETS", "ViT", "ViTConfig", "init_params", "make_apply", "preset"]
