"""Test-side paged batches for ``forward_paged``: page tables over a shuffled free list, padded step inputs,
and the chunked-prefill-then-decode greedy loop.

Not a test module: ``tests/test_model_paged_forward.py`` and ``tests/test_tensor_parallel.py`` import it.
JAX is imported only where device arrays are built (the tensor-parallel parent process never builds any).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

PAGE_SIZE = 4
NUM_PAGES = 24  # per layer, incl. null page 0
PAGES_PER_SEQ = 8  # 32 tokens per sequence
MAX_SEQS = 4
NUM_TOKENS = 16  # padded rows per step

PROMPTS = {
    "a": [1, 17, 5, 99, 23, 64, 8, 8, 41, 77, 3, 120, 56],  # 13 tokens
    "b": [1, 42, 42, 7, 90, 31, 12, 100, 66],  # 9 tokens
}


class PagedBatcher:
    """Test-side mini scheduler: per-sequence page tables drawn from a shuffled free list."""

    def __init__(self, seed: int) -> None:
        self.free = [int(p) for p in np.random.default_rng(seed).permutation(np.arange(1, NUM_PAGES))]
        self.tables: dict[str, list[int]] = {}
        self.lens: dict[str, int] = {}

    def build(self, chunks: list[tuple[str, list[int]]]) -> dict[str, np.ndarray]:
        """Arrays for one step scheduling ``chunks`` (seq id, new tokens) in order."""
        arrays = {
            "token_ids": np.zeros(NUM_TOKENS, np.int32),
            "positions": np.zeros(NUM_TOKENS, np.int32),
            "slot_mapping": np.zeros(NUM_TOKENS, np.int32),  # padding rows write into null page 0
            "kv_lens": np.zeros(MAX_SEQS, np.int32),
            "page_indices": np.zeros((MAX_SEQS, PAGES_PER_SEQ), np.int32),
            "cu_q_lens": np.zeros(MAX_SEQS + 1, np.int32),
            "logits_indices": np.zeros(MAX_SEQS, np.int32),
        }
        row = 0
        for s, (sid, tokens) in enumerate(chunks):
            table = self.tables.setdefault(sid, [])
            start = self.lens.get(sid, 0)
            end = start + len(tokens)
            while len(table) * PAGE_SIZE < end:
                table.append(self.free.pop())
            for i, pos in enumerate(range(start, end)):
                arrays["token_ids"][row + i] = tokens[i]
                arrays["positions"][row + i] = pos
                arrays["slot_mapping"][row + i] = table[pos // PAGE_SIZE] * PAGE_SIZE + pos % PAGE_SIZE
            row += len(tokens)
            self.lens[sid] = end
            arrays["kv_lens"][s] = end
            arrays["page_indices"][s, : len(table)] = table
            arrays["cu_q_lens"][s + 1] = row
            arrays["logits_indices"][s] = row - 1
        arrays["cu_q_lens"][len(chunks) + 1 :] = row
        assert row <= NUM_TOKENS
        arrays["num_seqs"] = np.int32(len(chunks))
        return arrays

    def build_jax(self, chunks: list[tuple[str, list[int]]]) -> dict[str, Any]:
        """``build`` as JAX arrays: the keyword arguments of ``forward_paged``."""
        import jax.numpy as jnp

        return {k: jnp.asarray(v) for k, v in self.build(chunks).items()}


def greedy_chunked_run(
    step: Callable[[list[tuple[str, list[int]]]], Any],
    chunk_plan: dict[str, list[int]],
    num_new: int,
    on_sampled: Callable[[str, list[int], np.ndarray], None] | None = None,
) -> dict[str, list[int]]:
    """Prefill each sequence of ``PROMPTS`` with the chunk sizes in ``chunk_plan`` (sequences share steps),
    then decode them together, greedy, until each has ``num_new`` tokens; returns them per sequence.

    ``step(chunks)`` runs one step on ``chunks`` (seq id, new tokens) and returns its logits (one row per
    chunk). ``on_sampled(sid, tokens fed so far, logits row)`` sees every row a token is sampled from.
    """
    pending = {sid: list(sizes) for sid, sizes in chunk_plan.items()}
    fed: dict[str, list[int]] = {sid: [] for sid in chunk_plan}
    out: dict[str, list[int]] = {sid: [] for sid in chunk_plan}
    while any(len(t) < num_new for t in out.values()):
        chunks = []
        for sid in chunk_plan:
            if len(out[sid]) >= num_new:
                continue
            if pending[sid]:
                start = len(fed[sid])
                chunks.append((sid, PROMPTS[sid][start : start + pending[sid].pop(0)]))
            else:
                chunks.append((sid, [out[sid][-1]]))
        logits = np.asarray(step(chunks))
        for s, (sid, tokens) in enumerate(chunks):
            fed[sid] += tokens
            if len(fed[sid]) < len(PROMPTS[sid]):
                continue  # mid-prefill chunk: its logits are not sampled
            if on_sampled is not None:
                on_sampled(sid, fed[sid], logits[s])
            out[sid].append(int(np.argmax(logits[s])))
    return out
