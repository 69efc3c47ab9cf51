"""Plain causal attention over one contiguous sequence: the ground truth for the paged kernels."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from kernels.mask import visible
from kernels.softmax import resolve_scale


def dense_causal_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, *, sm_scale: float | None = None, sliding_window: int | None = None
) -> jax.Array:
    """Causal attention: q ``[T, Hq, D]``, k/v ``[T, Hkv, D]`` (GQA when ``Hq > Hkv``) -> ``[T, Hq, D]``.

    With ``sliding_window`` each query sees only its last ``sliding_window`` positions."""
    num_tokens, num_q_heads, head_dim = q.shape
    kv_heads = k.shape[1]
    group = num_q_heads // kv_heads
    scale = resolve_scale(sm_scale, head_dim)
    qg = q.astype(jnp.float32).reshape(num_tokens, kv_heads, group, head_dim) * scale
    scores = jnp.einsum("qhgd,khd->hgqk", qg, k.astype(jnp.float32))
    positions = jnp.arange(num_tokens)
    causal = visible(positions[None, :], positions[:, None], sliding_window)
    probs = jax.nn.softmax(jnp.where(causal, scores, -jnp.inf), axis=-1)
    out = jnp.einsum("hgqk,khd->qhgd", probs, v.astype(jnp.float32))
    return out.reshape(num_tokens, num_q_heads, head_dim).astype(q.dtype)
