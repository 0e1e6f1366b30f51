"""JAX's persistent compilation cache, on by default for the CLI and the experiments.

A schedule compiles to its own XLA program; on a 2-core CPU a reduced ViT-B-shaped program takes
seconds to compile. The cache keeps every compiled program on disk, so a second run of the same job
loads them instead of compiling again.

Where it lives: ``--compile-cache DIR``, else ``$TOFU_JAX_COMPILE_CACHE``, else
``$JAX_COMPILATION_CACHE_DIR``, else ``$XDG_CACHE_HOME/tofu_jax/xla`` (``~/.cache/tofu_jax/xla``).
``off`` (flag or variable) disables it.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

from tofu_jax.errors import UserError

ENV = "TOFU_JAX_COMPILE_CACHE"
OFF = "off"


def default_dir() -> str:
    """The directory used when neither the flag nor a variable names one (``off`` included)."""
    for var in (ENV, "JAX_COMPILATION_CACHE_DIR"):
        if os.environ.get(var):
            return os.environ[var]
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "tofu_jax", "xla")


def enable(path: str | None = None) -> Path | None:
    """Point JAX's persistent cache at ``path`` (default :func:`default_dir`); returns it, or None if off.

    Call before the first compilation of the process. Every program is cached, however quick to
    compile, since the small ones add up over a job.
    """
    choice = path if path is not None else default_dir()
    if not choice.strip():
        raise UserError("the compile cache directory is empty; pass --compile-cache DIR or off")
    if choice == OFF:
        jax.config.update("jax_enable_compilation_cache", False)
        return None
    directory = Path(choice).expanduser()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        problem = None if os.access(directory, os.W_OK) else "not writable"
    except OSError as e:
        problem = e.strerror
    if problem:
        raise UserError(f"cannot use {directory} as the compile cache ({problem}); set --compile-cache or "
                        f"${ENV} to another directory, or to off")  # fmt: skip
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return directory
