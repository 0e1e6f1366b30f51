"""Fixtures for the checkpoint tests: tiny configs and the reference libraries (parity extra)."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types

import pytest

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


class _Placeholder:
    """Stands for any torchvision object timm touches at import time (never called by a ViT)."""

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        return _Placeholder()

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Placeholder()

    def __mro_entries__(self, bases):
        return (object,)


class _PlaceholderModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Placeholder()


class _TorchvisionStub(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path, target=None):
        if name == "torchvision" or name.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _PlaceholderModule(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module):
        pass


def _import_timm():
    """Import timm; without a working torchvision, behind a placeholder used only during the import.

    timm imports torchvision (transforms, datasets, FrozenBatchNorm2d) at import time but its
    VisionTransformer never uses it. PyPI's torchvision wheels are CUDA builds that fail to load
    against the CPU torch wheel (``operator torchvision::nms does not exist``), so the parity extra
    installs timm with ``--no-deps``; the placeholder modules are removed again after the import.
    """
    try:
        import torchvision  # noqa: F401
    except Exception:  # ImportError, or RuntimeError from a CUDA torchvision on CPU torch
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
    else:
        return importlib.import_module("timm")
    stub = _TorchvisionStub()
    sys.meta_path.insert(0, stub)
    try:
        return importlib.import_module("timm")
    finally:
        sys.meta_path.remove(stub)
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            if isinstance(sys.modules[name], _PlaceholderModule):
                del sys.modules[name]


@pytest.fixture(scope="session")
def timm(torch):
    if importlib.util.find_spec("timm") is None:
        pytest.skip("timm is not installed (pip install --no-deps timm)")
    try:
        return _import_timm()
    except ImportError as e:
        pytest.skip(f"timm cannot be imported: {e}")
