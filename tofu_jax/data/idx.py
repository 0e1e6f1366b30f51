"""Reader for the IDX files of (Fashion-)MNIST, e.g. Debian's ``dataset-fashion-mnist``.

Images come back as ``uint8 [N, 28, 28, 1]`` and labels as ``int32 [N]``; nothing is downloaded.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

from tofu_jax.errors import DataError

DEFAULT_DIRS = ("/usr/share/datasets/fashion-mnist",)
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def default_dir() -> Path:
    """``$TOFU_JAX_FASHION_MNIST`` or the first existing default directory."""
    env = os.environ.get("TOFU_JAX_FASHION_MNIST")
    if env:
        return Path(env)
    for d in DEFAULT_DIRS:
        if Path(d).is_dir():
            return Path(d)
    return Path(DEFAULT_DIRS[0])


def read_idx(path: str | Path) -> np.ndarray:
    """Parse one IDX file (gzipped or not) into a NumPy array, checking header and length."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read IDX file {path}: {e.strerror}") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{path} is a corrupt or truncated gzip file: {e}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number {raw[:4].hex()})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path} is truncated inside its header")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_DTYPES[raw[2]])
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(
            f"{path} is truncated or padded: header says shape {dims} ({expected} bytes), "
            f"file holds {len(raw) - header} bytes of data"
        )
    return np.frombuffer(raw, dtype, offset=header).reshape(dims)


def _find(directory: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (directory / name).is_file():
            return directory / name
    raise DataError(
        f"missing {stem}(.gz) in {directory}; install Debian's dataset-fashion-mnist or pass a "
        "directory holding the four IDX files"
    )


def load_split(split: str, directory: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Load ``"train"`` or ``"test"``: ``(images uint8 [N, 28, 28, 1], labels int32 [N])``."""
    if split not in FILES:
        raise DataError(f"split must be 'train' or 'test', got {split!r}")
    directory = Path(directory) if directory is not None else default_dir()
    if not directory.is_dir():
        raise DataError(
            f"Fashion-MNIST directory {directory} does not exist; install Debian's "
            "dataset-fashion-mnist or set TOFU_JAX_FASHION_MNIST"
        )
    img_name, lbl_name = FILES[split]
    images = read_idx(_find(directory, img_name))
    labels = read_idx(_find(directory, lbl_name))
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise DataError(f"{split} split: images {images.shape} and labels {labels.shape} do not match")
    if images.dtype != np.uint8 or labels.dtype != np.uint8:
        raise DataError(
            f"{split} split in {directory}: expected uint8 IDX files, got {images.dtype} / {labels.dtype}"
        )
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"{split} labels outside 0..9 in {directory}")
    return images[..., None].astype(np.uint8), labels.astype(np.int32)


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write ``uint8`` data as a gzipped IDX file (used by tests to make small datasets)."""
    array = np.asarray(array, np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    Path(path).write_bytes(gzip.compress(header + array.tobytes()))
