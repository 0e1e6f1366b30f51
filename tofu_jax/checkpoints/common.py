"""Flat-dict helpers, strict parameter merging and position-embedding resampling.

Checkpoints are read without pickle: ``numpy.load(allow_pickle=False)`` and safetensors.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tofu_jax.errors import UserError


class CheckpointError(UserError):
    """A checkpoint that does not fit the model: lists every problem at once."""


def flatten(tree: Mapping, sep: str = "/") -> dict[str, Any]:
    """``{"a": {"b": x}}`` -> ``{"a/b": x}``."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            for sub, v in flatten(value, sep).items():
                out[f"{key}{sep}{sub}"] = v
        else:
            out[str(key)] = value
    return out


def unflatten(flat: Mapping[str, Any], sep: str = "/") -> dict:
    """Inverse of :func:`flatten`."""
    tree: dict = {}
    for key, value in flat.items():
        node = tree
        *parents, leaf = key.split(sep)
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def strict_merge(
    loaded: Mapping[str, np.ndarray], expected: Mapping[str, Any], source: str = "checkpoint"
) -> dict[str, np.ndarray]:
    """Check a flat checkpoint against the model's flat parameter shapes; all problems in one error.

    Args:
      loaded: ``{name: array}`` converted to the canonical names.
      expected: ``{name: array or ShapeDtypeStruct}`` from the model.
    Returns:
      ``loaded`` as float32 NumPy arrays when every key and shape matches.
    """
    missing = sorted(set(expected) - set(loaded))
    unexpected = sorted(set(loaded) - set(expected))
    misshaped = sorted(
        f"{k}: checkpoint {tuple(np.shape(loaded[k]))} vs model {tuple(expected[k].shape)}"
        for k in set(loaded) & set(expected)
        if tuple(np.shape(loaded[k])) != tuple(expected[k].shape)
    )
    if missing or unexpected or misshaped:
        lines = [f"{source} does not match the model:"]
        for title, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
            if items:
                lines.append(f"  {len(items)} {title} key(s):")
                lines.extend(f"    {item}" for item in items)
        raise CheckpointError("\n".join(lines))
    not_float = sorted(
        f"{k} ({np.asarray(v).dtype})" for k, v in loaded.items() if np.asarray(v).dtype.kind not in "fV"
    )
    if not_float:
        raise CheckpointError(
            f"{source} holds non-floating-point parameters: {', '.join(not_float)}; model parameters "
            "must be float16/bfloat16/float32/float64"
        )
    out = {}
    bad = []
    for k, v in loaded.items():
        arr = np.asarray(v, np.float32)
        if not np.all(np.isfinite(arr)):
            bad.append(k)
        out[k] = arr
    if bad:
        raise CheckpointError(f"{source} holds NaN or Inf values in: {', '.join(sorted(bad))}")
    return out


def resample_posemb(posemb: np.ndarray, num_prefix: int, new_grid: int) -> np.ndarray:
    """Bilinearly resample a ``[1, P + g*g, D]`` position embedding to ``[1, P + G*G, D]``.

    The ``num_prefix`` leading rows (CLS / distillation) are kept as they are.
    """
    posemb = np.asarray(posemb, np.float32)
    prefix, grid = posemb[:, :num_prefix], posemb[0, num_prefix:]
    old = int(round(np.sqrt(grid.shape[0])))
    if old * old != grid.shape[0]:
        raise CheckpointError(f"position embedding with {grid.shape[0]} patch rows is not a square grid")
    if old == new_grid:
        return posemb
    grid = grid.reshape(old, old, -1)
    resized = jax.image.resize(jnp.asarray(grid), (new_grid, new_grid, grid.shape[-1]), "bilinear")
    return np.concatenate([prefix, np.asarray(resized).reshape(1, new_grid * new_grid, -1)], axis=1)


def npz_load(path: str | Path) -> dict[str, np.ndarray]:
    """Read every array of an ``.npz`` without pickle; damage of any kind is a :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        problem = "not found" if not path.exists() else "is not a file"
        raise CheckpointError(f"checkpoint {path} {problem}")
    with open(path, "rb") as fh:
        magic = fh.read(6)
    if magic[:1] == b"\x80":
        raise CheckpointError(f"{path} is a Python pickle; tofu_jax reads checkpoints without pickle")
    if magic == b"\x93NUMPY":
        raise CheckpointError(f"{path} holds one .npy array, not an .npz archive of named arrays")
    if magic[:4] != b"PK\x03\x04":
        raise CheckpointError(f"{path} is not an .npz (zip) archive: empty, truncated or another format")
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except ValueError as e:
        if "pickle" in str(e):
            raise CheckpointError(
                f"{path} holds pickled Python objects; tofu_jax reads checkpoints without pickle, so "
                "re-save it with numeric arrays only"
            ) from None
        raise CheckpointError(f"checkpoint {path} is damaged or truncated: {e}") from None
    except Exception as e:  # zipfile, zlib, npy-header and EOF errors all mean a damaged file
        raise CheckpointError(
            f"checkpoint {path} is damaged or truncated ({type(e).__name__}: {e}); re-download or re-save it"
        ) from None


def npz_save(path: str | Path, flat: Mapping[str, Any]) -> None:
    """Write ``{name: array}`` as an uncompressed ``.npz`` (atomic rename)."""
    path = Path(path)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **{k: np.asarray(v) for k, v in flat.items()})
    tmp.replace(path)
