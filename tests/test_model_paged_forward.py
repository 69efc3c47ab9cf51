"""forward_paged (ragged batch, paged KV cache) must reproduce forward_dense and dense greedy decoding."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

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
PAGE_SIZE = 4
NUM_PAGES = 24  # per layer, incl. null page 0
PAGES_PER_SEQ = 8  # 32 tokens per sequence
MAX_SEQS = 4
NUM_TOKENS = 16  # padded rows per step
DENSE_LEN = 32  # dense oracle bucket
ATOL = 1e-4

PROMPTS = {
    "a": [1, 17, 5, 99, 23, 64, 8, 8, 41, 77, 3, 120, 56],  # 13 tokens
    "b": [1, 42, 42, 7, 90, 31, 12, 100, 66],  # 9 tokens
}


@pytest.fixture(scope="module")
def params():
    return init_params(CONFIG, jax.random.key(0))


class PagedBatcher:
    """Test-side mini scheduler: per-sequence page tables drawn from a shuffled free list."""

    def __init__(self, seed: int) -> None:
        self.free = [int(p) for p in np.random.default_rng(seed).permutation(np.arange(1, NUM_PAGES))]
        self.tables: dict[str, list[int]] = {}
        self.lens: dict[str, int] = {}

    def build(self, chunks: list[tuple[str, list[int]]]) -> dict[str, jax.Array]:
        """Arrays for one step scheduling ``chunks`` (seq id, new tokens) in order."""
        token_ids = np.zeros(NUM_TOKENS, np.int32)
        positions = np.zeros(NUM_TOKENS, np.int32)
        slots = np.zeros(NUM_TOKENS, np.int32)  # padding rows write into null page 0
        kv_lens = np.zeros(MAX_SEQS, np.int32)
        page_indices = np.zeros((MAX_SEQS, PAGES_PER_SEQ), np.int32)
        cu_q_lens = np.zeros(MAX_SEQS + 1, np.int32)
        logits_indices = np.zeros(MAX_SEQS, np.int32)
        row = 0
        for s, (sid, tokens) in enumerate(chunks):
            table = self.tables.setdefault(sid, [])
            start = self.lens.get(sid, 0)
            end = start + len(tokens)
            while len(table) * PAGE_SIZE < end:
                table.append(self.free.pop())
            for i, pos in enumerate(range(start, end)):
                token_ids[row + i] = tokens[i]
                positions[row + i] = pos
                slots[row + i] = table[pos // PAGE_SIZE] * PAGE_SIZE + pos % PAGE_SIZE
            row += len(tokens)
            self.lens[sid] = end
            kv_lens[s] = end
            page_indices[s, : len(table)] = table
            cu_q_lens[s + 1] = row
            logits_indices[s] = row - 1
        cu_q_lens[len(chunks) + 1 :] = row
        assert row <= NUM_TOKENS
        return {
            "token_ids": jnp.asarray(token_ids),
            "positions": jnp.asarray(positions),
            "slot_mapping": jnp.asarray(slots),
            "kv_lens": jnp.asarray(kv_lens),
            "page_indices": jnp.asarray(page_indices),
            "cu_q_lens": jnp.asarray(cu_q_lens),
            "num_seqs": jnp.int32(len(chunks)),
            "logits_indices": jnp.asarray(logits_indices),
        }


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
    pending = {sid: list(sizes) for sid, sizes in chunk_plan.items()}
    sequences = {sid: [] for sid in chunk_plan}  # tokens fed so far
    generated: dict[str, list[int]] = {sid: [] for sid in chunk_plan}
    while any(len(g) < num_new for g in generated.values()):
        chunks = []
        for sid in chunk_plan:
            if len(generated[sid]) >= num_new:
                continue
            if pending[sid]:
                start = len(sequences[sid])
                chunks.append((sid, PROMPTS[sid][start : start + pending[sid].pop(0)]))
            else:
                chunks.append((sid, [generated[sid][-1]]))
        logits, kv = forward(params, kv_caches=kv, **batcher.build(chunks))
        logits = np.asarray(logits)
        for s, (sid, tokens) in enumerate(chunks):
            sequences[sid] += tokens
            if len(sequences[sid]) < len(PROMPTS[sid]):
                continue  # mid-prefill chunk: its logits are not sampled, but must still be right
            expected = dense_last_logits(params, sequences[sid])
            np.testing.assert_allclose(logits[s], expected, atol=ATOL, rtol=0)
            generated[sid].append(int(np.argmax(logits[s])))
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
        logits, kv = forward(params, kv_caches=kv, **batcher.build([("a", prompt[lo:hi])]))
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
    _, new_kv = make_paged_forward(CONFIG)(params, kv_caches=kv, **PagedBatcher(0).build([("a", [1, 2])]))
    assert all(c.is_deleted() for c in kv)
    assert not any(c.is_deleted() for c in new_kv)


def test_bfloat16_params_and_cache(params):
    """bf16 weights + bf16 pages run through the same jitted path; logits stay close to the f32 oracle."""
    bf16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
    kv = allocate_kv_caches(CONFIG, NUM_PAGES, PAGE_SIZE, jnp.bfloat16)
    prompt = PROMPTS["a"]
    logits, kv = make_paged_forward(CONFIG)(bf16, kv_caches=kv, **PagedBatcher(5).build([("a", prompt)]))
    assert logits.dtype == jnp.float32 and kv[0].dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(logits)[0], dense_last_logits(params, prompt), atol=1e-2)
