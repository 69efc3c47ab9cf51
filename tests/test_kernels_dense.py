"""dense_causal_attention, the oracle of the paged kernels, against a float64 loop."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from kernels import dense_causal_attention


def naive_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: float) -> np.ndarray:
    group = q.shape[1] // k.shape[1]
    out = np.zeros(q.shape)
    for t in range(q.shape[0]):
        for h in range(q.shape[1]):
            scores = k[: t + 1, h // group] @ q[t, h] * scale
            weights = np.exp(scores - scores.max())
            out[t, h] = weights @ v[: t + 1, h // group] / weights.sum()
    return out


@pytest.mark.parametrize(("num_q_heads", "kv_heads", "sm_scale"), [(2, 2, None), (4, 2, None), (8, 1, 0.3)])
def test_matches_naive_loop(num_q_heads: int, kv_heads: int, sm_scale: float | None) -> None:
    rng = np.random.default_rng(num_q_heads)
    q = rng.standard_normal((7, num_q_heads, 16))
    k, v = rng.standard_normal((2, 7, kv_heads, 16))
    out = dense_causal_attention(*(jnp.asarray(x, jnp.float32) for x in (q, k, v)), sm_scale=sm_scale)
    expected = naive_attention(q, k, v, 16**-0.5 if sm_scale is None else sm_scale)
    np.testing.assert_allclose(np.asarray(out), expected, atol=1e-5, rtol=1e-5)
