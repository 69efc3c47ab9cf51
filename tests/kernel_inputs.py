"""Paged-attention batches from ``(cached tokens, new tokens)`` per sequence, checked against dense attention.

Not a test module: ``tests/test_kernels_ragged_attention.py`` and ``tests/test_kernels_pallas.py`` import it,
each binding its own padded sizes (``max_context``, ``num_tokens``, ``max_seqs``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from paged_batches import RandomPagedBatch, make_paged_batch

from kernels.mask import first_visible


def build_batch(
    seqs: list[tuple[int, int]],
    page_size: int,
    head_shape: tuple[int, int, int],
    seed: int = 0,
    *,
    max_context: int,
    num_tokens: int,
    max_seqs: int,
    dtype: jnp.dtype = jnp.float32,
) -> RandomPagedBatch:
    """One sequence per ``(prior, new)`` in ``seqs``; ``head_shape`` is (q heads, kv heads, head dim); page
    tables hold ``max_context`` tokens."""
    num_q_heads, kv_heads, head_dim = head_shape
    return make_paged_batch(
        np.random.default_rng(seed),
        prior_lens=[prior for prior, _ in seqs],
        q_lens=[new for _, new in seqs],
        page_size=page_size,
        num_q_heads=num_q_heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        num_tokens=num_tokens,
        max_seqs=max_seqs,
        pages_per_seq=-(-max_context // page_size),
        dtype=dtype,
    )


def check_against_dense(
    impl: Callable[..., jax.Array],
    batch: RandomPagedBatch,
    *,
    max_context: int,
    atol: float = 2e-5,
    sm_scale: float | None = None,
    sliding_window: int | None = None,
) -> None:
    """``impl`` on ``batch`` keeps the query's shape and dtype, is finite, and equals dense attention (within
    ``sliding_window`` when given)."""
    window = {} if sliding_window is None else {"sliding_window": sliding_window}
    out = impl(*batch.args(), sm_scale=sm_scale, **window)
    assert out.shape == batch.q.shape and out.dtype == batch.q.dtype
    out = np.asarray(out, np.float32)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(
        out, batch.expected(sm_scale=sm_scale, pad_to=max_context, sliding_window=sliding_window), atol=atol, rtol=atol
    )


def release_pages_outside_window(batch: RandomPagedBatch, sliding_window: int, page_size: int) -> RandomPagedBatch:
    """``batch`` with every page table entry no query row of its sequence can see (wholly before the first visible
    position of the sequence's earliest query row) pointed at page 0, which holds garbage: what an allocator that
    frees pages left behind by a sliding window leaves in the table."""
    tables = np.array(batch.page_indices)
    cu = np.asarray(batch.cu_q_lens)
    for s, (q, _, _) in enumerate(batch.contexts):
        first_query = q.shape[0] - int(cu[s + 1] - cu[s])
        tables[s, : int(first_visible(first_query, sliding_window)) // page_size] = 0
    return dataclasses.replace(batch, page_indices=jnp.asarray(tables))
