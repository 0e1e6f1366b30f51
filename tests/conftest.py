import os
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
# One compile cache per test run: programs that several tests (and the CLI subprocesses) build again
# are loaded instead of recompiled.
os.environ.setdefault("TOFU_JAX_COMPILE_CACHE", tempfile.mkdtemp(prefix="tofu_jax_test_xla_"))

from tofu_jax import compile_cache  # noqa: E402

compile_cache.enable()

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

from tests.helpers import PROFILED, random_params  # noqa: E402

settings.register_profile("ci", max_examples=25, deadline=None)
settings.register_profile("dev", max_examples=15, deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


def _scaled_params(scales):
    """Random tiny model whose block i has its MLP's first layer scaled by scales[i]."""
    params = random_params(PROFILED, 0, 0.5, noise_seed=3)
    for i, s in enumerate(scales):
        mlp = params["Transformer"][f"encoderblock_{i}"]["MlpBlock_3"]
        mlp["Dense_0"]["kernel"] = mlp["Dense_0"]["kernel"] * s
        mlp["Dense_0"]["bias"] = mlp["Dense_0"]["bias"] * s
        mlp["Dense_1"]["kernel"] = mlp["Dense_1"]["kernel"] / s
    return params


@pytest.fixture(scope="session")
def profile():
    """The linearity profile of :data:`tests.helpers.PROFILED` (tests/test_profiler.py, test_planner.py)."""
    from tofu_jax.profiler import profile_model

    # Blocks 0, 1: GELU driven far into its kinks (non-linear); blocks 2, 3: GELU's near-linear core.
    params = _scaled_params([40.0, 40.0, 1e-3, 1e-3])
    images = np.random.default_rng(1).uniform(-1, 1, (16, 16, 16, 1)).astype(np.float32)
    return profile_model(PROFILED, params, images, r_profile=8, batch_size=8)


# The reference libraries (the parity extra), skipped where they are not installed.


@pytest.fixture(scope="session")
def torch():
    return pytest.importorskip("torch")


@pytest.fixture(scope="session")
def transformers(torch):
    return pytest.importorskip("transformers")


@pytest.fixture(scope="session")
def timm(torch):
    import importlib.util

    from experiments.torch_reference import import_timm

    if importlib.util.find_spec("timm") is None:
        pytest.skip("timm is not installed (pip install --no-deps timm)")
    try:
        return import_timm()
    except ImportError as e:
        pytest.skip(f"timm cannot be imported: {e}")
