"""Pure-jnp ragged paged attention: every query row gathers its sequence's whole page table.

Simple and obviously correct, but costs ``num_tokens * pages_per_seq * page_size`` per layer regardless of
the real context lengths. It is the oracle the faster implementations are checked against.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from kernels.batch_layout import token_layout
from kernels.mask import visible
from kernels.paged_batch import PagedBatch
from kernels.softmax import masked_softmax, resolve_scale


@functools.partial(jax.jit, static_argnames=("sm_scale", "sliding_window"))
def ragged_paged_attention_reference(
    q: jax.Array, k_pages: jax.Array, v_pages: jax.Array, batch: PagedBatch, *,
    sm_scale: float | None = None, sliding_window: int | None = None,
) -> jax.Array:  # fmt: skip
    """Causal attention of ragged query rows ``[T, Hq, D]`` over a paged KV cache -> ``[T, Hq, D]``.

    See ``kernels`` package docs for the argument layout. Padding rows come out as zeros. With
    ``sliding_window`` a row sees only its last ``sliding_window`` positions.
    """
    num_tokens, num_q_heads, head_dim = q.shape
    kv_heads, _, page_size, _ = k_pages.shape
    pages_per_seq = batch.page_indices.shape[1]
    context = pages_per_seq * page_size
    group = num_q_heads // kv_heads
    scale = resolve_scale(sm_scale, head_dim)

    layout = token_layout(batch, num_tokens)
    pages = batch.page_indices[layout.seq_ids]  # [T, pages_per_seq]
    keys = k_pages[:, pages].reshape(kv_heads, num_tokens, context, head_dim).astype(jnp.float32)
    values = v_pages[:, pages].reshape(kv_heads, num_tokens, context, head_dim).astype(jnp.float32)

    qg = q.astype(jnp.float32).reshape(num_tokens, kv_heads, group, head_dim) * scale
    scores = jnp.einsum("thgd,htkd->thgk", qg, keys)
    seen = visible(jnp.arange(context)[None, :], layout.positions[:, None], sliding_window)  # [T, context]
    probs = masked_softmax(jnp.where(seen[:, None, None, :], scores, -jnp.inf))
    out = jnp.einsum("thgk,htkd->thgd", probs, values)
    return out.reshape(num_tokens, num_q_heads, head_dim).astype(q.dtype)
