"""The linearity metric: ~0 for affine maps, clearly positive for non-linear ones (docs/algorithms.md §6)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tofu_jax.linearity import linearity


def test_linearity_of_linear_and_nonlinear_functions():
    rng = np.random.default_rng(0)
    x1, x2 = (jnp.asarray(rng.normal(size=(64, 8))) for _ in range(2))
    w = jnp.asarray(rng.normal(size=(8, 5)))
    assert float(linearity(lambda x: x @ w + 1.0, x1, x2)) < 1e-10
    assert float(linearity(lambda x: jax.nn.relu(x @ w), x1, x2)) > 0.02
    assert float(linearity(lambda x: (x @ w) ** 2, x1, x2)) > 0.05
    with pytest.raises(ValueError, match="x1 and x2"):
        linearity(lambda x: x, x1, x2[:3])
