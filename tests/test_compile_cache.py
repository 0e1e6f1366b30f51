"""The persistent compile cache: where it goes, how to move or disable it, and that the CLI uses it."""

import os
import subprocess
import sys

from tofu_jax import compile_cache


def test_default_dir_follows_the_variables(monkeypatch, tmp_path):
    for var in (compile_cache.ENV, "JAX_COMPILATION_CACHE_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert compile_cache.default_dir() == str(tmp_path / "tofu_jax" / "xla")
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "/jax/dir")
    assert compile_cache.default_dir() == "/jax/dir"
    monkeypatch.setenv(compile_cache.ENV, "off")
    assert compile_cache.default_dir() == "off"


RUN = """
import sys, jax, jax.numpy as jnp
from tofu_jax import compile_cache
print(compile_cache.enable(sys.argv[1] if len(sys.argv) > 1 else None))
jax.jit(lambda x: jnp.sin(x) * 2)(jnp.ones(7)).block_until_ready()
"""


def _run(tmp_path, *args, env=None):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", **(env or {})}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    proc = subprocess.run([sys.executable, "-c", RUN, *args], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_programs_land_in_the_chosen_directory(tmp_path):
    cache = tmp_path / "flag"
    assert _run(tmp_path, str(cache)) == str(cache)
    assert any(cache.iterdir())
    via_env = tmp_path / "env"
    _run(tmp_path, env={compile_cache.ENV: str(via_env)})
    assert any(via_env.iterdir())


def test_off_writes_nothing(tmp_path):
    assert _run(tmp_path, "off", env={"XDG_CACHE_HOME": str(tmp_path)}) == "None"
    assert not (tmp_path / "tofu_jax").exists()
