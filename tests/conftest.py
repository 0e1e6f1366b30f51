import os
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
# One compile cache per test run: programs that several tests (and the CLI subprocesses) build again
# are loaded instead of recompiled.
os.environ.setdefault("TOFU_JAX_COMPILE_CACHE", tempfile.mkdtemp(prefix="tofu_jax_test_xla_"))

from tofu_jax import compile_cache  # noqa: E402

compile_cache.enable()

from hypothesis import settings  # noqa: E402

settings.register_profile("ci", max_examples=25, deadline=None)
settings.register_profile("dev", max_examples=15, deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")
