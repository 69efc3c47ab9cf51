"""Where each query row of a ragged batch belongs: its sequence and its absolute position."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from kernels.paged_batch import PagedBatch


class TokenLayout(NamedTuple):
    """Per query row: owning sequence (clipped into range for padding rows) and position (-1 = padding)."""

    seq_ids: jax.Array
    positions: jax.Array


def query_lens(cu_q_lens: jax.Array, num_seqs: jax.Array) -> jax.Array:
    """New-token count per sequence ``[max_seqs]``; zero for padding sequences."""
    max_seqs = cu_q_lens.shape[0] - 1
    live = jnp.arange(max_seqs) < num_seqs
    return jnp.where(live, cu_q_lens[1:] - cu_q_lens[:-1], 0).astype(jnp.int32)


def token_layout(batch: PagedBatch, num_tokens: int) -> TokenLayout:
    """Map each of ``num_tokens`` query rows of ``batch`` to its sequence and causal position.

    Row ``i`` of sequence ``s`` sits at ``kv_lens[s] - q_len_s + i``; rows past ``cu_q_lens[num_seqs]``
    are padding. Entries of ``cu_q_lens`` beyond ``num_seqs`` are ignored.
    """
    cu_q_lens, kv_lens = batch.cu_q_lens, batch.kv_lens
    max_seqs = kv_lens.shape[0]
    num_seqs = jnp.minimum(batch.num_seqs, max_seqs)
    total = cu_q_lens[num_seqs]
    ends = jnp.where(jnp.arange(max_seqs) < num_seqs, cu_q_lens[1:], total)
    rows = jnp.arange(num_tokens, dtype=jnp.int32)
    seq_ids = jnp.minimum(jnp.searchsorted(ends, rows, side="right"), max_seqs - 1).astype(jnp.int32)
    q_lens = query_lens(cu_q_lens, num_seqs)
    positions = kv_lens[seq_ids] - q_lens[seq_ids] + rows - cu_q_lens[seq_ids]
    positions = jnp.where(rows < total, positions, -1).astype(jnp.int32)
    return TokenLayout(seq_ids=seq_ids, positions=positions)
