"""Shared tiny model and files for the fuzz tests: built once, all with ``jax.eval_shape`` or NumPy."""

from __future__ import annotations

import json

import pytest

from tests.checkpoints.helpers import random_flat
from tests.helpers import TINY, write_fashion_idx
from tofu_jax.checkpoints import google
from tofu_jax.checkpoints.common import unflatten

CONFIG = TINY.replace(input_norm="inception")


@pytest.fixture(scope="session")
def files(tmp_path_factory):
    """A valid checkpoint, card, schedule, profile-free data dir: the seeds that the fuzzers damage."""
    root = tmp_path_factory.mktemp("fuzz")
    google.save_npz(root / "model.npz", unflatten(random_flat(CONFIG)))
    (root / "card.json").write_text(json.dumps({"config": CONFIG.to_dict()}))
    write_fashion_idx(root / "data", train=16, test=8)
    return root
