"""forward_paged (ragged batch, paged KV cache) must reproduce forward_dense and dense greedy decoding."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from paged_inputs import (
    NUM_PAGES,
    PAGE_SIZE,
    PROMPTS,
    PagedBatcher,
    greedy_chunked_run,
)

from odrive.models import (
    LlamaConfig,
    allocate_kv_caches,
    dense_greedy_generate,
    init_params,
    layer_kv_pages,
    make_dense_forward,
    make_paged_forward,
)

CONFIG = LlamaConfig(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    rope_theta=10000.0,
)
DENSE_LEN = 32  # dense oracle bucket
ATOL = 1e-4


@pytest.fixture(scope="module")
def params():
    return init_params(CONFIG, jax.random.key(0))


def dense_last_logits(params, tokens: list[int]) -> np.ndarray:
    """Oracle: forward_dense on the right-padded sequence, logits at its last real position."""
    buf = np.zeros((1, DENSE_LEN), np.int32)
    buf[0, : len(tokens)] = tokens
    return np.asarray(make_dense_forward(CONFIG)(params, jnp.asarray(buf))[0, len(tokens) - 1])


def run_paged(params, chunk_plan: dict[str, list[int]], num_new: int, seed: int = 0):
    """Prefill each sequence with the given chunk sizes (sequences share steps), then decode them together.

    Checks every produced logits row against the dense oracle; returns the greedy tokens per sequence.
    """
    forward = make_paged_forward(CONFIG)
    kv = allocate_kv_caches(CONFIG, NUM_PAGES, PAGE_SIZE, jnp.float32)
    batcher = PagedBatcher(seed)

    def step(chunks):
        nonlocal kv
        logits, kv = forward(params, kv_caches=kv, **batcher.build_jax(chunks))
        return logits

    def check(sid, tokens, logits_row):
        np.testing.assert_allclose(logits_row, dense_last_logits(params, tokens), atol=ATOL, rtol=0)

    generated = greedy_chunked_run(step, chunk_plan, num_new, check)
    return generated, kv, batcher


@pytest.mark.parametrize(
    "chunk_plan",
    [
        pytest.param({"a": [13]}, id="single-chunk-prefill"),
        pytest.param({"a": [5, 4, 4]}, id="chunked-prefill"),
        pytest.param({"a": [5, 4, 4], "b": [6, 3]}, id="chunked-two-seqs-mixed"),
        pytest.param({"b": [9], "a": [2, 11]}, id="decode-alongside-prefill"),
    ],
)
def test_paged_matches_dense(params, chunk_plan):
    generated, _, _ = run_paged(params, chunk_plan, num_new=5)
    for sid, tokens in generated.items():
        assert tokens == dense_greedy_generate(params, CONFIG, PROMPTS[sid], 5)


def test_mid_prefill_chunk_logits_match_dense(params):
    """The logits of a non-final prefill chunk's last row equal dense logits at that position."""
    forward = make_paged_forward(CONFIG)
    kv = allocate_kv_caches(CONFIG, NUM_PAGES, PAGE_SIZE, jnp.float32)
    batcher = PagedBatcher(seed=3)
    prompt = PROMPTS["a"]
    for lo, hi in [(0, 3), (3, 10), (10, 13)]:
        logits, kv = forward(params, kv_caches=kv, **batcher.build_jax([("a", prompt[lo:hi])]))
        np.testing.assert_allclose(np.asarray(logits)[0], dense_last_logits(params, prompt[:hi]), atol=ATOL)


def test_cache_layout_and_null_page(params):
    """Only the sequence's pages (in each layer's range) and the null page are written."""
    _, kv, batcher = run_paged(params, {"a": [5, 4, 4]}, num_new=2, seed=7)
    used = set(batcher.tables["a"])
    for layer in range(CONFIG.num_hidden_layers):
        k_pages, v_pages = layer_kv_pages(kv, CONFIG, layer)
        assert k_pages.shape == (CONFIG.num_key_value_heads, NUM_PAGES, PAGE_SIZE, CONFIG.head_dim)
        written = {p for p in range(NUM_PAGES) if np.any(np.asarray(k_pages[:, p]) != 0)}
        assert written - {0} == used
        # 14 tokens written; the tail of the last page stays empty.
        last = batcher.tables["a"][-1]
        assert np.all(np.asarray(v_pages[:, last, 14 % PAGE_SIZE :]) == 0)


def test_kv_caches_are_donated(params):
    kv = allocate_kv_caches(CONFIG, NUM_PAGES, PAGE_SIZE, jnp.float32)
    _, new_kv = make_paged_forward(CONFIG)(params, kv_caches=kv, **PagedBatcher(0).build_jax([("a", [1, 2])]))
    assert all(c.is_deleted() for c in kv)
    assert not any(c.is_deleted() for c in new_kv)


def test_bfloat16_params_and_cache(params):
    """bf16 weights + bf16 pages run through the same jitted path; logits stay close to the f32 oracle."""
    bf16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
    kv = allocate_kv_caches(CONFIG, NUM_PAGES, PAGE_SIZE, jnp.bfloat16)
    prompt = PROMPTS["a"]
    logits, kv = make_paged_forward(CONFIG)(bf16, kv_caches=kv, **PagedBatcher(5).build_jax([("a", prompt)]))
    assert logits.dtype == jnp.float32 and kv[0].dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(logits)[0], dense_last_logits(params, prompt), atol=1e-2)
