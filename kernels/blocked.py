"""Ragged paged attention that walks the KV cache block by block with an online softmax.

Two passes over the batch, each looping (``fori_loop`` with traced trip counts) only over the KV blocks a
sequence really has, so cost follows real context length rather than the page-table capacity:

* decode pass: sequences with exactly one new token, batched together; one gather of ``pages_per_block``
  pages per sequence per step, up to the longest decode context in the batch;
* prefill pass: sequences with ``q_len > 1`` one at a time, tiled into ``q_block`` query rows; each tile
  reads its sequence's pages once for all its rows and stops at its last causal position.

Default tile sizes come from sweeps with benchmarks/bench_paged_attention.py on CPU (SmolLM2-135M's heads). Prefill
tiles of 64 query rows over 64 KV tokens: 128 x 256 tiles over 64-token prompts computed 8x the scores they needed
(32 such prompts ran 5x faster with 64 x 64, 4 prompts of 128 tokens 1.8x) and lost only ~10% on one 512-token
prompt. Decode blocks of 32 KV tokens (a decode block gathers every sequence's pages at once: 64-token blocks stayed
in cache where 256-token ones did not, 2-3x faster for 8-32 sequences of 100-600 tokens, and 32-token blocks were
another 0-20% faster). The prefill pass
visits only the sequences with more than one new token, so a decode step pays nothing for it.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from kernels.batch_layout import query_lens
from kernels.mask import first_visible, visible
from kernels.paged_batch import PagedBatch
from kernels.softmax import SoftmaxState, absorb_scores, finish_softmax, init_softmax_state, resolve_scale

NEG_INF = -jnp.inf


def _cdiv(a: jax.Array, b: int) -> jax.Array:
    return (a + b - 1) // b


def _gather_block(pages: jax.Array, page_table: jax.Array, block: jax.Array, pages_per_block: int) -> jax.Array:
    """Pages ``[block * ppb, (block + 1) * ppb)`` of every row of ``page_table`` as float32 tokens.

    ``page_table``: ``[..., padded_pages]`` -> ``[kv_heads, ..., ppb * page_size, head_dim]``.
    """
    ids = jax.lax.dynamic_slice_in_dim(page_table, block * pages_per_block, pages_per_block, axis=-1)
    kv_heads, _, page_size, head_dim = pages.shape
    gathered = pages[:, ids]  # [kv_heads, ..., ppb, page_size, head_dim]
    return gathered.reshape(kv_heads, *ids.shape[:-1], pages_per_block * page_size, head_dim).astype(jnp.float32)


def _decode_pass(
    out: jax.Array, q: jax.Array, k_pages: jax.Array, v_pages: jax.Array, batch: PagedBatch, q_lens: jax.Array,
    scale: float, pages_per_block: int, sliding_window: int | None,
) -> jax.Array:  # fmt: skip
    """Attention for all single-token sequences at once, written into their rows of ``out``.

    ``batch.page_indices`` is padded to a whole number of blocks."""
    kv_lens, page_table, cu_q_lens = batch.kv_lens, batch.page_indices, batch.cu_q_lens
    max_seqs = kv_lens.shape[0]
    num_q_heads, head_dim = q.shape[1:]
    kv_heads, _, page_size, _ = k_pages.shape
    group = num_q_heads // kv_heads
    block_tokens = pages_per_block * page_size

    is_decode = q_lens == 1
    context = jnp.where(is_decode, kv_lens, 0)
    rows = jnp.clip(cu_q_lens[:-1], 0, q.shape[0] - 1)
    qd = q[rows].astype(jnp.float32).reshape(max_seqs, kv_heads, group, head_dim) * scale

    def step(block: jax.Array, state: SoftmaxState) -> SoftmaxState:
        keys = _gather_block(k_pages, page_table, block, pages_per_block)  # [H, S, K, D]
        values = _gather_block(v_pages, page_table, block, pages_per_block)
        scores = jnp.einsum("shgd,hskd->shgk", qd, keys)
        keys_at = block * block_tokens + jnp.arange(block_tokens)[None, :]
        seen = visible(keys_at, context[:, None] - 1, sliding_window)
        probs, state = absorb_scores(state, jnp.where(seen[:, None, None, :], scores, NEG_INF))
        return state._replace(acc=state.acc + jnp.einsum("shgk,hskd->shgd", probs, values))

    num_blocks = _cdiv(context.max(), block_tokens)
    live = jnp.where(is_decode, first_visible(context - 1, sliding_window), jnp.iinfo(jnp.int32).max)
    first_block = jnp.minimum(live.min() // block_tokens, num_blocks) if sliding_window is not None else 0
    init = init_softmax_state((max_seqs, kv_heads, group), head_dim)
    state = jax.lax.fori_loop(first_block, num_blocks, step, init)
    result = finish_softmax(state).reshape(max_seqs, num_q_heads, head_dim).astype(out.dtype)
    targets = jnp.where(is_decode, rows, out.shape[0])  # out of range -> dropped
    return out.at[targets].set(result, mode="drop")


def _prefill_pass(
    out: jax.Array, q_padded: jax.Array, k_pages: jax.Array, v_pages: jax.Array, batch: PagedBatch,
    q_lens: jax.Array, scale: float, pages_per_block: int, q_block: int, sliding_window: int | None,
) -> jax.Array:  # fmt: skip
    """Attention for every multi-token sequence, tile by tile, merged into its rows of ``out``."""
    kv_lens, page_table, cu_q_lens = batch.kv_lens, batch.page_indices, batch.cu_q_lens
    num_q_heads, head_dim = q_padded.shape[1:]
    kv_heads, _, page_size, _ = k_pages.shape
    group = num_q_heads // kv_heads
    block_tokens = pages_per_block * page_size

    def q_tile(seq: jax.Array, tile: jax.Array, out: jax.Array) -> jax.Array:
        q_len, kv_len = q_lens[seq], kv_lens[seq]
        start = cu_q_lens[seq] + tile * q_block
        row = tile * q_block + jnp.arange(q_block)
        position = kv_len - q_len + row  # [q_block]
        qt = jax.lax.dynamic_slice_in_dim(q_padded, start, q_block).astype(jnp.float32) * scale
        qt = qt.reshape(q_block, kv_heads, group, head_dim)
        table = page_table[seq]

        def step(block: jax.Array, state: SoftmaxState) -> SoftmaxState:
            keys = _gather_block(k_pages, table, block, pages_per_block)  # [H, K, D]
            values = _gather_block(v_pages, table, block, pages_per_block)
            scores = jnp.einsum("qhgd,hkd->hgqk", qt, keys)
            seen = visible(block * block_tokens + jnp.arange(block_tokens)[None, :], position[:, None], sliding_window)
            probs, state = absorb_scores(state, jnp.where(seen, scores, NEG_INF))
            return state._replace(acc=state.acc + jnp.einsum("hgqk,hkd->hgqd", probs, values))

        last_position = kv_len - q_len + jnp.minimum((tile + 1) * q_block, q_len) - 1
        first_block = first_visible(kv_len - q_len + tile * q_block, sliding_window) // block_tokens
        init = init_softmax_state((kv_heads, group, q_block), head_dim)
        state = jax.lax.fori_loop(first_block, last_position // block_tokens + 1, step, init)
        result = jnp.moveaxis(finish_softmax(state), 2, 0).reshape(q_block, num_q_heads, head_dim)
        previous = jax.lax.dynamic_slice_in_dim(out, start, q_block)
        merged = jnp.where((row < q_len)[:, None, None], result.astype(out.dtype), previous)
        return jax.lax.dynamic_update_slice_in_dim(out, merged, start, axis=0)

    is_prefill = q_lens > 1
    prefill_seqs = jnp.nonzero(is_prefill, size=q_lens.shape[0], fill_value=0)[0]

    def one_sequence(i: jax.Array, out: jax.Array) -> jax.Array:
        seq = prefill_seqs[i]
        return jax.lax.fori_loop(0, _cdiv(q_lens[seq], q_block), functools.partial(q_tile, seq), out)

    return jax.lax.fori_loop(0, is_prefill.sum(), one_sequence, out)


@functools.partial(
    jax.jit, static_argnames=("sm_scale", "sliding_window", "kv_block_tokens", "decode_kv_block_tokens", "q_block")
)
def ragged_paged_attention_blocked(
    q: jax.Array, k_pages: jax.Array, v_pages: jax.Array, batch: PagedBatch, *,
    sm_scale: float | None = None, sliding_window: int | None = None,
    kv_block_tokens: int = 64, decode_kv_block_tokens: int = 32, q_block: int = 64,
) -> jax.Array:  # fmt: skip
    """Same contract as ``ragged_paged_attention_reference``; prefill tiles of ``q_block`` query rows read KV
    ``kv_block_tokens`` at a time, the decode pass ``decode_kv_block_tokens`` at a time."""
    num_tokens, _, head_dim = q.shape
    page_size = k_pages.shape[2]
    max_seqs, pages_per_seq = batch.page_indices.shape
    pages_per_block = max(1, min(pages_per_seq, kv_block_tokens // page_size))
    decode_pages_per_block = max(1, min(pages_per_seq, decode_kv_block_tokens // page_size))
    q_block = max(1, min(q_block, num_tokens))
    scale = resolve_scale(sm_scale, head_dim)

    num_seqs = jnp.minimum(jnp.asarray(batch.num_seqs, jnp.int32), max_seqs)
    q_lens = query_lens(batch.cu_q_lens, num_seqs)
    table_pad = -pages_per_seq % math.lcm(pages_per_block, decode_pages_per_block)
    page_table = jnp.pad(batch.page_indices.astype(jnp.int32), ((0, 0), (0, table_pad)))
    padded = batch._replace(page_indices=page_table, num_seqs=num_seqs)
    tail = jnp.zeros((q_block, *q.shape[1:]), q.dtype)  # tiles may run past the last row
    q_padded = jnp.concatenate([q, tail])

    out = jnp.zeros_like(q_padded)
    out = _prefill_pass(
        out, q_padded, k_pages, v_pages, padded, q_lens, scale, pages_per_block, q_block, sliding_window
    )
    out = _decode_pass(out, q, k_pages, v_pages, padded, q_lens, scale, decode_pages_per_block, sliding_window)
    return out[:num_tokens]
