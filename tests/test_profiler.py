"""The per-block linearity profile separates non-linear from near-linear blocks and round-trips as JSON.

The profile is the session fixture ``profile`` (tests/conftest.py), shared with tests/test_planner.py.
"""

import numpy as np

from tofu_jax import planner
from tofu_jax.profiler import Profile


def test_profile_separates_linear_from_nonlinear_blocks(profile, tmp_path):
    L = profile.metric("L_mlp_matched")
    assert max(L[2:]) < 0.5 * min(L[:2]), L
    assert all(np.isfinite(profile.metric(m)).all() for m in ("L_block_random", "cos_random", "norm_cv"))
    ops, info = planner.choose_ops(profile, "per_block")
    assert ops == ["prune", "prune", "merge_mlerp", "merge_mlerp"], (ops, info)
    ops, info = planner.choose_ops(profile, "split")
    assert info["split"] == 2
    path = tmp_path / "p.json"
    profile.save(path)
    assert Profile.load(path) == profile
