"""Bipartite soft matching against the NumPy reference, and the requests it refuses (algorithms.md §2)."""

import jax.numpy as jnp
import numpy as np
import pytest

from tests import reference
from tests.helpers import random_tokens
from tofu_jax import matching as M


@pytest.mark.parametrize(
    "n,r,protected", [(17, 5, 1), (16, 7, 1), (20, 9, 2), (11, 5, 0), (197, 98, 1), (21, 8, 5), (22, 8, 4)]
)
def test_matching_equals_reference(n, r, protected):
    metric = random_tokens(0, 3, n, 8)
    m = M.bipartite_soft_matching(jnp.asarray(metric), r, protected=protected)
    ref = reference.matching(metric, r, protected)
    for i, (unm, src, dst) in enumerate(ref):
        np.testing.assert_array_equal(np.asarray(m.unm_idx[i]), unm)
        np.testing.assert_array_equal(np.asarray(m.src_idx[i]), src)
        np.testing.assert_array_equal(np.asarray(m.dst_idx[i]), dst)


@pytest.mark.parametrize(
    "call,needle",
    [
        (lambda: M.bipartite_soft_matching(jnp.zeros((2, 10, 4)), 5), "r=5 out of range"),
        (lambda: M.bipartite_soft_matching(jnp.zeros((2, 10, 4)), -1), "0..4"),
        (lambda: M.bipartite_soft_matching(jnp.zeros((10, 4)), 1), "metric must have shape"),
        (lambda: M.bipartite_soft_matching(jnp.zeros((2, 10, 4)), 2, protected=-1), "protected"),
    ],
)
def test_bad_requests_raise_value_error(call, needle):
    with pytest.raises(ValueError, match=needle):
        call()
