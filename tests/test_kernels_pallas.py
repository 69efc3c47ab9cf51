"""The Pallas kernel, run in interpret mode on CPU, against per-sequence dense attention.

Interpret mode is slow to compile, so these cases are few and small.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax import export
from kernel_inputs import build_batch, check_against_dense, release_pages_outside_window
from paged_batches import RandomPagedBatch

from kernels import ragged_paged_attention_pallas
from kernels.pallas_attention import pallas_supports

MAX_CONTEXT, NUM_TOKENS, MAX_SEQS = 24, 24, 4
GQA = (4, 2, 16)  # (q heads, kv heads, head dim)
CONFIGS = [(1, GQA), (4, GQA), (16, GQA), (8, (8, 1, 32))]  # (page size, head shape)

pallas_interpret = functools.partial(ragged_paged_attention_pallas, interpret=True)
sequences = st.tuples(st.integers(0, 12), st.one_of(st.just(1), st.integers(2, 8)))


build = functools.partial(build_batch, max_context=MAX_CONTEXT, num_tokens=NUM_TOKENS, max_seqs=MAX_SEQS)


def check(batch: RandomPagedBatch, atol: float = 2e-5, sliding_window: int | None = None) -> None:
    check_against_dense(pallas_interpret, batch, max_context=MAX_CONTEXT, atol=atol, sliding_window=sliding_window)


@settings(max_examples=12, deadline=None)
@given(
    seqs=st.lists(sequences, min_size=1, max_size=3),
    config=st.sampled_from(CONFIGS),
    seed=st.integers(0, 2**31 - 1),
)
def test_matches_dense_attention(
    seqs: list[tuple[int, int]], config: tuple[int, tuple[int, int, int]], seed: int
) -> None:
    check(build(seqs, *config, seed))


@pytest.mark.parametrize(
    ("seqs", "page_size"),
    [([(0, 1)], 4), ([(15, 1), (8, 8)], 4), ([(23, 1), (0, 16)], 16)],
    ids=["single-token", "context-multiple-of-page", "full-page-table"],
)
def test_edge_cases(seqs: list[tuple[int, int]], page_size: int) -> None:
    check(build(seqs, page_size, GQA))


@pytest.mark.parametrize("window", [1, 6])
def test_sliding_window_matches_dense(window: int) -> None:
    check(build([(15, 1), (8, 8), (0, 12), (20, 3)], 4, GQA), sliding_window=window)


def test_sliding_window_never_reads_released_pages() -> None:
    batch = release_pages_outside_window(build([(20, 1), (12, 8), (2, 1)], 4, GQA), 6, 4)
    assert (np.asarray(batch.page_indices)[:2, 0] == 0).all()
    check(batch, sliding_window=6)


def test_bfloat16() -> None:
    check(build([(5, 1), (3, 6)], 4, GQA, dtype=jnp.bfloat16), atol=3e-2)


def test_all_padding_gives_zeros() -> None:
    batch = build([(6, 1)], 4, GQA)
    empty = batch.batch._replace(num_seqs=jnp.asarray(0, jnp.int32))
    out = pallas_interpret(batch.q, batch.k_pages, batch.v_pages, empty)
    np.testing.assert_array_equal(np.asarray(out), 0.0)


def test_lowers_to_triton_for_cuda() -> None:
    """Without a GPU, at least check the kernel passes the Pallas Triton lowering (power-of-2 tiles, ops)."""
    batch = build([(5, 1), (9, 6)], 16, (8, 2, 64))
    exported = export.export(
        jax.jit(ragged_paged_attention_pallas),
        platforms=("cuda",),
        disabled_checks=[export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")],
    )(*batch.args())
    assert "xla.gpu.triton" in exported.mlir_module()


def test_shape_support_check() -> None:
    k_pages = jnp.zeros((2, 3, 16, 64))
    assert pallas_supports(jnp.zeros((1, 8, 64)), k_pages)
    assert not pallas_supports(jnp.zeros((1, 6, 64)), k_pages)  # group of 3
    assert not pallas_supports(jnp.zeros((1, 8, 48)), jnp.zeros((2, 3, 16, 48)))
