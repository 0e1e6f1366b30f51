"""Fixtures for the checkpoint tests: the tiny config (torch, transformers, timm: tests/conftest.py)."""

from __future__ import annotations

import pytest

from tofu_jax.models.vit import ViTConfig

from .helpers import TINY


@pytest.fixture
def tiny() -> ViTConfig:
    return ViTConfig(**TINY)
