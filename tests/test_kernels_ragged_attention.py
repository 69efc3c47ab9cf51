"""Ragged paged attention (reference, blocked, platform default) against per-sequence dense attention.

Batches mix decodes (q_len 1) with prefill chunks that may follow cached context; pages are assigned in a
random order, q rows and sequences are padded, and unowned pages hold garbage that must never be read.
Shapes come from a small set so jit compiles stay few.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel_inputs import build_batch, check_against_dense, release_pages_outside_window

from kernels import (
    dense_causal_attention,
    ragged_paged_attention,
    ragged_paged_attention_blocked,
    ragged_paged_attention_reference,
)

MAX_CONTEXT, NUM_TOKENS, MAX_SEQS = 40, 64, 5
GQA = (4, 2, 16)  # (q heads, kv heads, head dim)
# (page size, head shape): every page size and every head layout, in few combinations (one compile each).
CONFIGS = [(page_size, GQA) for page_size in (1, 2, 4, 8, 16)] + [(2, (2, 2, 8)), (8, (8, 1, 32))]

IMPLS: dict[str, Callable[..., jax.Array]] = {
    "reference": ragged_paged_attention_reference,
    "blocked": ragged_paged_attention_blocked,
    # Tiny tiles so that contexts span many KV blocks and chunks many query tiles.
    "blocked-small-tiles": functools.partial(ragged_paged_attention_blocked, kv_block_tokens=4, q_block=3),
}

# (cached tokens before this step, new tokens): decodes and prefill chunks, with or without prior context.
sequences = st.tuples(st.integers(0, 24), st.one_of(st.just(1), st.integers(2, 16)))


build = functools.partial(build_batch, max_context=MAX_CONTEXT, num_tokens=NUM_TOKENS, max_seqs=MAX_SEQS)
check = functools.partial(check_against_dense, max_context=MAX_CONTEXT)


@pytest.mark.parametrize("name", list(IMPLS))
@settings(max_examples=25, deadline=None)
@given(
    seqs=st.lists(sequences, min_size=1, max_size=4),
    config=st.sampled_from(CONFIGS),
    seed=st.integers(0, 2**31 - 1),
)
def test_matches_dense_attention(
    name: str, seqs: list[tuple[int, int]], config: tuple[int, tuple[int, int, int]], seed: int
) -> None:
    check(IMPLS[name], build(seqs, *config, seed))


@pytest.mark.parametrize("name", list(IMPLS))
@settings(max_examples=8, deadline=None)
@given(seqs=st.lists(sequences, min_size=1, max_size=4), seed=st.integers(0, 2**31 - 1))
def test_bfloat16(name: str, seqs: list[tuple[int, int]], seed: int) -> None:
    check(IMPLS[name], build(seqs, 4, GQA, seed, dtype=jnp.bfloat16), atol=3e-2)


EDGE_CASES = {
    "context-multiple-of-page": ([(15, 1), (8, 8), (0, 16)], 8),
    "context-multiple-of-page-size-1": ([(3, 1), (0, 4)], 1),
    "single-token": ([(0, 1)], 4),
    "single-page-size-16": ([(15, 1)], 16),
    "long-chunk-after-long-context": ([(24, 16), (39, 1)], 2),
}


@pytest.mark.parametrize("name", list(IMPLS))
@pytest.mark.parametrize("case", list(EDGE_CASES))
def test_edge_cases(name: str, case: str) -> None:
    seqs, page_size = EDGE_CASES[case]
    check(IMPLS[name], build(seqs, page_size, GQA))


@pytest.mark.parametrize("name", list(IMPLS))
def test_many_padded_sequences_and_rows(name: str) -> None:
    check(IMPLS[name], build([(6, 1)], 4, GQA, num_tokens=16, max_seqs=8))


@pytest.mark.parametrize("name", list(IMPLS))
def test_no_padding_at_all(name: str) -> None:
    check(IMPLS[name], build([(3, 1), (0, 5), (9, 2)], 4, GQA, num_tokens=8, max_seqs=3))


@pytest.mark.parametrize("name", list(IMPLS))
def test_all_padding_gives_zeros(name: str) -> None:
    batch = build([(6, 1)], 4, GQA)
    args = (batch.q, batch.k_pages, batch.v_pages, batch.batch._replace(num_seqs=jnp.asarray(0, jnp.int32)))
    np.testing.assert_array_equal(np.asarray(IMPLS[name](*args)), 0.0)


@pytest.mark.parametrize("name", list(IMPLS))
def test_custom_scale_and_outer_jit(name: str) -> None:
    batch = build([(5, 1), (2, 7)], 8, (8, 1, 32))
    check(jax.jit(IMPLS[name], static_argnames="sm_scale"), batch, sm_scale=0.05)


WINDOWS = (1, 5, 16)  # a static argument each: one compile per window and page size


@pytest.mark.parametrize("name", list(IMPLS))
@settings(max_examples=12, deadline=None)
@given(
    seqs=st.lists(sequences, min_size=1, max_size=4),
    window=st.sampled_from(WINDOWS),
    page_size=st.sampled_from((1, 4)),
    seed=st.integers(0, 2**31 - 1),
)
def test_sliding_window_matches_dense(
    name: str, seqs: list[tuple[int, int]], window: int, page_size: int, seed: int
) -> None:
    check(IMPLS[name], build(seqs, page_size, GQA, seed), sliding_window=window)


@pytest.mark.parametrize("name", list(IMPLS))
@pytest.mark.parametrize("window", [5, 16])
def test_sliding_window_never_reads_released_pages(name: str, window: int) -> None:
    """Pages wholly behind the window may be freed: their table entries then point at a page of garbage."""
    seqs = [(30, 1), (24, 9), (3, 1), (0, 16), (39, 1)]
    batch = release_pages_outside_window(build(seqs, 4, GQA, max_seqs=5), window, 4)
    assert (np.asarray(batch.page_indices)[:, 0] == 0).sum() >= 3  # some sequences really lost pages
    check(IMPLS[name], batch, sliding_window=window)


def test_platform_default_matches_dense() -> None:
    check(ragged_paged_attention, build([(11, 1), (4, 9), (0, 1)], 4, GQA))


def test_dense_oracle_is_causal_under_padding() -> None:
    """``RandomPagedBatch.expected`` pads contexts; causality must make that padding invisible."""
    rng = np.random.default_rng(1)
    q, k, v = (jnp.asarray(rng.standard_normal((9, 2, 8)), jnp.float32) for _ in range(3))
    padded = [jnp.pad(x, ((0, 5), (0, 0), (0, 0))) for x in (q, k, v)]
    np.testing.assert_allclose(
        np.asarray(dense_causal_attention(*padded))[:9],
        np.asarray(dense_causal_attention(q, k, v)),
        atol=1e-6,
    )
