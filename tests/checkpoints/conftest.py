"""Fixtures for the checkpoint tests: tiny configs and the reference libraries (parity extra)."""

from __future__ import annotations

import importlib.util

import pytest

from experiments.torch_reference import import_timm
from tofu_jax.models.vit import ViTConfig

from .helpers import TINY


@pytest.fixture
def tiny() -> ViTConfig:
    return ViTConfig(**TINY)


@pytest.fixture(scope="session")
def torch():
    return pytest.importorskip("torch")


@pytest.fixture(scope="session")
def transformers(torch):
    return pytest.importorskip("transformers")


@pytest.fixture(scope="session")
def timm(torch):
    if importlib.util.find_spec("timm") is None:
        pytest.skip("timm is not installed (pip install --no-deps timm)")
    try:
        return import_timm()
    except ImportError as e:
        pytest.skip(f"timm cannot be imported: {e}")
