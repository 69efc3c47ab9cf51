"""Stateless decoder building blocks: RMSNorm, SwiGLU MLP, dense causal GQA attention."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from kernels.mask import visible


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    """RMSNorm computed in float32, cast back to ``x.dtype`` before scaling (as HF Llama does)."""
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return weight * x32.astype(x.dtype)


def swiglu_mlp(x: jax.Array, w_gate: jax.Array, w_up: jax.Array, w_down: jax.Array) -> jax.Array:
    """``down(silu(x @ gate) * (x @ up))`` with ``[in, out]`` weights."""
    return (jax.nn.silu(x @ w_gate) * (x @ w_up)) @ w_down


def batched_causal_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, sm_scale: float, sliding_window: int | None = None
) -> jax.Array:
    """Causal GQA attention. q ``[B, T, Hq, D]``, k/v ``[B, T, Hkv, D]`` -> ``[B, T, Hq, D]``.

    Query head ``h`` attends with kv head ``h // (Hq // Hkv)`` (HF ``repeat_kv`` order); softmax in float32.
    With ``sliding_window`` each query sees only its last ``sliding_window`` positions (Mistral).
    """
    b, t, hq, d = q.shape
    hkv = k.shape[2]
    qg = q.reshape(b, t, hkv, hq // hkv, d)
    scores = jnp.einsum("btkgd,bskd->bkgts", qg, k, preferred_element_type=jnp.float32) * sm_scale
    positions = jnp.arange(t)
    causal = visible(positions[None, :], positions[:, None], sliding_window)
    scores = jnp.where(causal, scores, -jnp.inf)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v)
    return out.reshape(b, t, hq, d)
