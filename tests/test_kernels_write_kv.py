"""write_kv_pages: every token lands in its slot; no other slot changes (page 0 absorbs padding)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels import write_kv_pages

KV_HEADS, HEAD_DIM, NUM_PAGES = 2, 8, 6


@settings(max_examples=30, deadline=None)
@given(
    page_size=st.sampled_from([1, 2, 4, 8, 16]),
    num_real=st.integers(0, 6),
    num_padding=st.integers(0, 3),
    seed=st.integers(0, 2**31 - 1),
)
def test_tokens_land_in_their_slots_and_nothing_else_changes(
    page_size: int, num_real: int, num_padding: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    num_real = min(num_real, (NUM_PAGES - 1) * page_size)  # distinct slots outside the null page
    shape = (KV_HEADS, NUM_PAGES, page_size, HEAD_DIM)
    k_pages, v_pages = rng.standard_normal(shape, np.float32), rng.standard_normal(shape, np.float32)
    real_slots = rng.choice(np.arange(page_size, NUM_PAGES * page_size), num_real, replace=False)
    padding_slots = rng.integers(0, page_size, num_padding)
    slots = rng.permutation(np.concatenate([real_slots, padding_slots])).astype(np.int32)
    k = rng.standard_normal((len(slots), KV_HEADS, HEAD_DIM), np.float32)
    v = rng.standard_normal((len(slots), KV_HEADS, HEAD_DIM), np.float32)

    new_k, new_v = write_kv_pages(*map(jnp.asarray, (k_pages, v_pages, k, v, slots)))

    for before, after, written in ((k_pages, new_k, k), (v_pages, new_v, v)):
        flat_before = before.reshape(KV_HEADS, -1, HEAD_DIM)
        flat_after = np.asarray(after).reshape(KV_HEADS, -1, HEAD_DIM)
        expected = flat_before.copy()
        for token, slot in enumerate(slots):
            if slot >= page_size:
                expected[:, slot] = written[token]
        checked = page_size if num_padding else 0  # page 0 may only change when padding writes into it
        np.testing.assert_array_equal(flat_after[:, checked:], expected[:, checked:])


def test_casts_to_cache_dtype_and_works_with_donated_caches() -> None:
    shape = (KV_HEADS, NUM_PAGES, 4, HEAD_DIM)
    k_pages = jnp.zeros(shape, jnp.bfloat16)
    v_pages = jnp.zeros(shape, jnp.bfloat16)
    k = jnp.ones((2, KV_HEADS, HEAD_DIM), jnp.float32)
    v = 2 * jnp.ones((2, KV_HEADS, HEAD_DIM), jnp.float32)
    step = jax.jit(write_kv_pages, donate_argnums=(0, 1))
    k_pages, v_pages = step(k_pages, v_pages, k, v, jnp.array([5, 0], jnp.int32))  # slot 5 = page 1, offset 1
    assert k_pages.dtype == jnp.bfloat16
    assert float(k_pages[0, 1, 1, 0]) == 1.0 and float(v_pages[1, 1, 1, 3]) == 2.0
    assert float(jnp.abs(k_pages[:, 1:]).sum()) == KV_HEADS * HEAD_DIM
