"""Token-importance scores: key norms and first-order (Taylor) gradient saliency."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import random_tokens
from tofu_jax.errors import UserError
from tofu_jax.scoring import gradient_saliency, key_norm


def test_key_norm_is_the_l2_norm_per_token_for_averaged_and_per_head_keys():
    keys = random_tokens(0, 2, 5, 12)
    want = np.linalg.norm(keys, axis=-1)
    np.testing.assert_allclose(np.asarray(key_norm(jnp.asarray(keys))), want, rtol=1e-6)
    per_head = jnp.asarray(keys.reshape(2, 5, 3, 4))  # [B, N, H, hd]: the norm over all heads
    np.testing.assert_allclose(np.asarray(key_norm(per_head)), want, rtol=1e-6)
    assert key_norm(jnp.asarray(keys, jnp.bfloat16)).dtype == jnp.float32
    with pytest.raises(UserError, match=r"\[B, N, C\]"):
        key_norm(jnp.zeros((5, 12)))


def test_gradient_saliency_is_the_first_order_change_of_the_loss_per_token():
    tokens = jnp.asarray(random_tokens(1, 2, 6, 4))
    w = jnp.asarray(random_tokens(2, 1, 6, 4)[0])

    def loss(x):
        return jnp.sum(jnp.tanh(x * w))

    grads = jax.grad(loss)(tokens)
    scores = np.asarray(gradient_saliency(tokens, grads))
    assert scores.shape == (2, 6) and (scores >= 0).all()
    # Removing token j (x_j -> 0) changes the loss by about <x_j, dL/dx_j>.
    np.testing.assert_allclose(scores, np.abs(np.sum(np.asarray(tokens * grads), axis=-1)), rtol=1e-6)
    with pytest.raises(UserError, match="differs from tokens shape"):
        gradient_saliency(tokens, grads[:, :3])
    with pytest.raises(UserError, match=r"\[B, N, C\]"):
        gradient_saliency(tokens[0], grads[0])
