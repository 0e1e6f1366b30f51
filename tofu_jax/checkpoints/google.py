"""Google checkpoints (.npz): original AugReg/vision_transformer names and big_vision variants.

Handled differences (docs/algorithms.md §8): a ``params/`` prefix, Linen-numbered block modules
(``MultiHeadDotProductAttention_0``, ``LayerNorm_1``, ``MlpBlock_0``), a root-level ``pos_embedding``
without the CLS row, and a scanned ``encoderblock`` with a leading depth axis.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from tofu_jax.checkpoints.common import CheckpointError, flatten, npz_load, npz_save

_BIG_VISION_BLOCK = {
    "MultiHeadDotProductAttention_0": "MultiHeadDotProductAttention_1",
    "LayerNorm_1": "LayerNorm_2",
    "MlpBlock_0": "MlpBlock_3",
}


def save_npz(path: str | Path, params) -> None:
    """Write Flax params in the Google layout (``Transformer/encoderblock_0/...`` keys)."""
    npz_save(path, flatten(params))


def to_canonical(flat: dict[str, np.ndarray], source: str = "checkpoint") -> dict[str, np.ndarray]:
    """Rename a Google/big_vision flat dict to tofu_jax's canonical (AugReg) names."""
    try:
        return _to_canonical(flat)
    except (ValueError, IndexError) as e:  # a scanned block or root posemb of the wrong rank
        raise CheckpointError(f"{source}: a stacked or root parameter has the wrong rank: {e}") from None


def _to_canonical(flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    if any(k.startswith("params/") for k in flat):
        flat = {k.removeprefix("params/"): v for k, v in flat.items()}
    out: dict[str, np.ndarray] = {}
    for key, value in flat.items():
        parts = key.split("/")
        if len(parts) > 1 and parts[0] == "Transformer" and parts[1] == "encoderblock":
            # Scanned blocks: one leading depth axis, unstacked into encoderblock_i.
            for i in range(value.shape[0]):
                out[_rename_block("/".join(["Transformer", f"encoderblock_{i}"] + parts[2:]))] = value[i]
            continue
        out[_rename_block(key)] = value
    if "pos_embedding" in out:
        # big_vision adds posemb to patches before the CLS token is prepended: a zero CLS row.
        pos = out.pop("pos_embedding")
        prefix_rows = int("cls" in out) + int("dist" in out)
        prefix_rows += int(out["reg"].shape[1]) if "reg" in out and out["reg"].ndim == 3 else 0
        pos = np.concatenate([np.zeros((1, prefix_rows, pos.shape[-1]), pos.dtype), pos], axis=1)
        out["Transformer/posembed_input/pos_embedding"] = pos
    return out


def _rename_block(key: str) -> str:
    m = re.match(r"(Transformer/encoderblock_\d+/)([^/]+)(.*)", key)
    if m and m.group(2) in _BIG_VISION_BLOCK:
        return m.group(1) + _BIG_VISION_BLOCK[m.group(2)] + m.group(3)
    return key


def read_npz(path: str | Path) -> dict[str, np.ndarray]:
    """Load a Google/big_vision ``.npz`` and return canonical flat names (no pickle)."""
    flat = npz_load(path)
    if not flat:
        raise CheckpointError(f"{path} holds no arrays")
    return to_canonical(flat, str(path))
