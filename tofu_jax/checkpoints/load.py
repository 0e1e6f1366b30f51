"""One entry point: any supported checkpoint file -> canonical Flax params for a :class:`ViTConfig`."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from tofu_jax.checkpoints import google
from tofu_jax.checkpoints.common import (
    CheckpointError,
    flatten,
    resample_posemb,
    strict_merge,
    unflatten,
)
from tofu_jax.models.vit import ViT, ViTConfig

POS_KEY = "Transformer/posembed_input/pos_embedding"
FORMATS = ("auto", "google", "timm", "hf")


def model_shapes(config: ViTConfig) -> dict[str, jax.ShapeDtypeStruct]:
    """Flat ``{name: ShapeDtypeStruct}`` of the model's parameters (no compute)."""
    images = jnp.zeros((1, config.image_size, config.image_size, config.channels))
    shapes = jax.eval_shape(lambda: ViT(config).init(jax.random.PRNGKey(0), images))["params"]
    return flatten(shapes)


def read_flat(path: str | Path, fmt: str = "auto", config: ViTConfig | None = None) -> dict:
    """Read a checkpoint file and convert it to canonical flat names."""
    path = Path(path)
    if fmt not in FORMATS:
        raise CheckpointError(f"unknown checkpoint format {fmt!r}; choose from {', '.join(FORMATS)}")
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} not found")
    if fmt == "auto":
        fmt = "google" if path.suffix == ".npz" else "torch"
    if fmt == "google":
        return google.read_npz(path)
    from tofu_jax.checkpoints import torch_formats

    return torch_formats.read(path, fmt, config)


def adapt(
    flat: dict[str, np.ndarray], config: ViTConfig, *, reset_head: bool = False, source: str = "checkpoint"
) -> dict:
    """Resample the position embedding, optionally re-initialise the head, then merge strictly."""
    expected = model_shapes(config)
    flat = dict(flat)
    if POS_KEY in flat and POS_KEY in expected and np.ndim(flat[POS_KEY]) == 3:
        want = expected[POS_KEY].shape[1]
        if flat[POS_KEY].shape[1] != want:
            flat[POS_KEY] = resample_posemb(flat[POS_KEY], config.num_prefix, config.grid)
    if reset_head:
        for key in [k for k in expected if k.split("/")[0] in ("head", "head_dist")]:
            flat[key] = np.zeros(expected[key].shape, np.float32)
    try:
        merged = strict_merge(flat, expected, source)
    except CheckpointError as e:
        hint = ""
        if not reset_head and any(line.strip().startswith("head/") for line in str(e).splitlines()):
            hint = (
                "\n  (different class count? pass reset_head=True / --reset-head to re-initialise the head)"
            )
        raise CheckpointError(str(e) + hint) from None
    return jax.tree_util.tree_map(jnp.asarray, unflatten(merged))


def load_params(path: str | Path, config: ViTConfig, *, fmt: str = "auto", reset_head: bool = False) -> dict:
    """Load ``path`` (Google/big_vision npz, timm or HF safetensors / ``.pth`` / ``.bin``) for ``config``."""
    return adapt(read_flat(path, fmt, config), config, reset_head=reset_head, source=str(path))
