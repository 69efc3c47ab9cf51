"""Random ragged paged batches with a dense-attention oracle, for tests and benchmarks (not a test module).

Each sequence gets a full context of random q/k/v; its last ``q_len`` tokens are the step's queries. Pages
are handed out in a random permutation (page order != position order) and every page no sequence owns,
page 0 included, is filled with large garbage so that reading it shows up in the output.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from kernels import PagedBatch
from kernels.dense import dense_causal_attention

GARBAGE = 1e3


@dataclass(frozen=True)
class RandomPagedBatch:
    """Arguments for a ragged paged attention call, plus the contiguous per-sequence contexts."""

    q: jax.Array
    k_pages: jax.Array
    v_pages: jax.Array
    kv_lens: jax.Array
    page_indices: jax.Array
    cu_q_lens: jax.Array
    num_seqs: jax.Array
    contexts: tuple[tuple[np.ndarray, np.ndarray, np.ndarray], ...]  # per sequence: q, k, v [L, H, D]

    @property
    def batch(self) -> RandomPagedBatch:
        """The kernels' per-sequence metadata."""
        return PagedBatch(self.kv_lens, self.page_indices, self.cu_q_lens, self.num_seqs)

    def args(self) -> tuple[jax.Array, jax.Array, jax.Array, PagedBatch]:
        """Positional arguments of ``ragged_paged_attention``."""
        return (self.q, self.k_pages, self.v_pages, self.batch)

    def expected(
        self, *, sm_scale: float | None = None, pad_to: int | None = None, sliding_window: int | None = None
    ) -> np.ndarray:
        """``dense_causal_attention`` per sequence, rows stitched like ``q``; padding rows are zeros.

        ``pad_to`` pads every context to one length (causality makes the padding invisible), so the
        oracle compiles once per head shape instead of once per context length.
        """
        out = np.zeros(self.q.shape, np.float32)
        cu = np.asarray(self.cu_q_lens)
        for s, (q, k, v) in enumerate(self.contexts):
            length = q.shape[0]
            width = max(length, pad_to or 0)
            pad = ((0, width - length), (0, 0), (0, 0))
            q, k, v = (jnp.asarray(np.pad(x, pad)) for x in (q, k, v))
            dense = dense_causal_attention(q, k, v, sm_scale=sm_scale, sliding_window=sliding_window)
            q_len = int(cu[s + 1] - cu[s])
            out[cu[s] : cu[s + 1]] = np.asarray(dense[length - q_len : length], np.float32)
        return out


def make_paged_batch(
    rng: np.random.Generator,
    *,
    prior_lens: Sequence[int],
    q_lens: Sequence[int],
    page_size: int,
    num_q_heads: int,
    kv_heads: int,
    head_dim: int,
    num_tokens: int,
    max_seqs: int,
    pages_per_seq: int,
    spare_pages: int = 2,
    dtype: jnp.dtype = jnp.float32,
) -> PagedBatch:
    """A batch of ``len(q_lens)`` sequences, sequence ``s`` with ``prior_lens[s]`` cached tokens and
    ``q_lens[s]`` new ones, padded to ``num_tokens`` query rows and ``max_seqs`` sequences."""
    num_seqs = len(q_lens)
    kv_lens = [p + n for p, n in zip(prior_lens, q_lens, strict=True)]
    assert num_seqs <= max_seqs and sum(q_lens) <= num_tokens
    assert max(kv_lens) <= pages_per_seq * page_size
    num_pages = 1 + max_seqs * pages_per_seq + spare_pages
    np_dtype = np.dtype(dtype)

    def randn(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape, np.float32).astype(np_dtype)

    k_pages = np.full((kv_heads, num_pages, page_size, head_dim), GARBAGE, np_dtype)
    v_pages = np.full((kv_heads, num_pages, page_size, head_dim), GARBAGE, np_dtype)
    page_indices = rng.integers(0, num_pages, (max_seqs, pages_per_seq)).astype(np.int32)  # padding seqs
    free_pages = iter(rng.permutation(np.arange(1, num_pages)))
    q_rows = randn(num_tokens, num_q_heads, head_dim)  # padding rows keep their random values
    cu_q_lens = np.full(max_seqs + 1, sum(q_lens), np.int32)
    cu_q_lens[: num_seqs + 1] = np.concatenate([[0], np.cumsum(q_lens)])
    contexts = []
    for s, (length, q_len) in enumerate(zip(kv_lens, q_lens, strict=True)):
        q, k, v = (
            randn(length, num_q_heads, head_dim),
            randn(length, kv_heads, head_dim),
            randn(length, kv_heads, head_dim),
        )
        page_indices[s] = 0
        for j in range(-(-length // page_size)):
            page = next(free_pages)
            page_indices[s, j] = page
            chunk = slice(j * page_size, min((j + 1) * page_size, length))
            k_pages[:, page, : chunk.stop - chunk.start] = np.swapaxes(k[chunk], 0, 1)
            v_pages[:, page, : chunk.stop - chunk.start] = np.swapaxes(v[chunk], 0, 1)
        q_rows[cu_q_lens[s] : cu_q_lens[s + 1]] = q[length - q_len :]
        contexts.append((q, k, v))

    padded_kv_lens = rng.integers(0, pages_per_seq * page_size + 1, max_seqs).astype(np.int32)
    padded_kv_lens[:num_seqs] = kv_lens
    return RandomPagedBatch(
        q=jnp.asarray(q_rows),
        k_pages=jnp.asarray(k_pages),
        v_pages=jnp.asarray(v_pages),
        kv_lens=jnp.asarray(padded_kv_lens),
        page_indices=jnp.asarray(page_indices),
        cu_q_lens=jnp.asarray(cu_q_lens),
        num_seqs=jnp.asarray(num_seqs, jnp.int32),
        contexts=tuple(contexts),
    )
