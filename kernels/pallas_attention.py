"""Ragged paged attention as a Pallas kernel: one program per (query row, KV head).

Each program walks its sequence's page table one page at a time with an online softmax, stopping at its
own causal position, so decode rows and prefill rows are handled alike (prefill rows re-read shared pages;
the kernel is decode-focused). It uses no scalar prefetch and loads only ``[group, D]`` / ``[page_size, D]``
tiles, as the Triton (GPU) lowering requires. ``interpret=True`` runs it on any backend, for testing.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pl_triton

from kernels.batch_layout import token_layout
from kernels.mask import first_visible, visible
from kernels.paged_batch import PagedBatch
from kernels.softmax import SoftmaxState, absorb_scores, finish_softmax, init_softmax_state, resolve_scale

PALLAS_BACKENDS = ("gpu",)


def _power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def pallas_supports(q: jax.Array, k_pages: jax.Array) -> bool:
    """Whether the Triton lowering accepts these shapes: its tiles need power-of-two sizes."""
    group = q.shape[1] // k_pages.shape[0]
    page_size, head_dim = k_pages.shape[2:]
    return all(_power_of_two(n) for n in (group, page_size, head_dim))


def _kernel(
    seq_ref: jax.Array,
    pos_ref: jax.Array,
    table_ref: jax.Array,
    q_ref: jax.Array,
    k_ref: jax.Array,
    v_ref: jax.Array,
    o_ref: jax.Array,
    *,
    scale: float,
    sliding_window: int | None,
) -> None:
    row, head = pl.program_id(0), pl.program_id(1)
    seq, position = seq_ref[row], pos_ref[row]
    page_size, head_dim = k_ref.shape[2], k_ref.shape[3]
    q = q_ref[row, head].astype(jnp.float32) * scale  # [group, D]

    def step(j: jax.Array, state: SoftmaxState) -> SoftmaxState:
        page = table_ref[seq, j]
        keys = k_ref[head, page].astype(jnp.float32)  # [page_size, D]
        values = v_ref[head, page].astype(jnp.float32)
        scores = jnp.sum(q[:, None, :] * keys[None, :, :], axis=-1)  # [group, page_size]
        seen = visible(j * page_size + jnp.arange(page_size)[None, :], position, sliding_window)
        probs, state = absorb_scores(state, jnp.where(seen, scores, -jnp.inf))
        return state._replace(acc=state.acc + jnp.sum(probs[:, :, None] * values[None, :, :], axis=1))

    num_pages = (position + page_size) // page_size  # 0 for padding rows (position == -1)
    first_page = jnp.minimum(first_visible(position, sliding_window) // page_size, num_pages)
    state = jax.lax.fori_loop(first_page, num_pages, step, init_softmax_state((q.shape[0],), head_dim))
    o_ref[row, head] = finish_softmax(state).astype(o_ref.dtype)


@functools.partial(jax.jit, static_argnames=("sm_scale", "sliding_window", "interpret"))
def ragged_paged_attention_pallas(
    q: jax.Array, k_pages: jax.Array, v_pages: jax.Array, batch: PagedBatch, *,
    sm_scale: float | None = None, sliding_window: int | None = None,
    interpret: bool = False,
) -> jax.Array:  # fmt: skip
    """Same contract as ``ragged_paged_attention_reference``; ``interpret=True`` for CPU testing."""
    num_tokens, num_q_heads, head_dim = q.shape
    kv_heads = k_pages.shape[0]
    group = num_q_heads // kv_heads
    layout = token_layout(batch, num_tokens)
    kernel = functools.partial(_kernel, scale=resolve_scale(sm_scale, head_dim), sliding_window=sliding_window)
    out = pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((num_tokens, kv_heads, group, head_dim), q.dtype),
        grid=(num_tokens, kv_heads),
        interpret=interpret,
        compiler_params=pl_triton.CompilerParams(num_warps=4, num_stages=1),  # not the Mosaic GPU default
        name="ragged_paged_attention",
    )(
        layout.seq_ids,
        layout.positions,
        batch.page_indices.astype(jnp.int32),
        q.reshape(num_tokens, kv_heads, group, head_dim),
        k_pages,
        v_pages,
    )
    return out.reshape(num_tokens, num_q_heads, head_dim)
