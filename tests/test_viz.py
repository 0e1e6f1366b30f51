"""Token groups for the merge pictures (the plots themselves: the CLI runs in tests/test_cli.py)."""

import numpy as np


def test_token_groups_marks_pruned_patches():
    from tofu_jax.viz import token_groups

    sources = np.zeros((3, 5))  # CLS + 4 patches -> 2 groups, patch 3 pruned
    sources[0, 0] = 1
    sources[1, [1, 2]] = 1
    sources[2, 4] = 1
    np.testing.assert_array_equal(token_groups(sources, 1, 2), [[1, 1], [-1, 2]])
