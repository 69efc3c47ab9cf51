"""Turn a step's SeqChunks into the padded flat arrays the paged forward takes (padded with
:func:`odrive.core.buckets.bucket_for`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from odrive.allocators.base import NULL_PAGE
from odrive.core.buckets import bucket_for
from odrive.core.executor import SeqChunk


@dataclass
class ModelInputs:
    """Host arrays for one step, padded to compile buckets (tokens, sequences; pages per seq fixed)."""

    token_ids: np.ndarray
    positions: np.ndarray
    slot_mapping: np.ndarray
    kv_lens: np.ndarray
    page_indices: np.ndarray
    cu_q_lens: np.ndarray
    num_seqs: np.ndarray
    logits_indices: np.ndarray
    sample_rows: list[int]  # rows of logits_indices whose request samples


class BatchBuilder:
    """Pads ragged batches to a bounded set of shapes so the real engine compiles a bounded number of
    times: token counts to ``token_buckets`` (the prefill_lengths plus powers of two), sequence counts to
    ``seq_buckets``, page tables to ``pages_per_seq``."""

    def __init__(self, page_size: int, token_buckets: tuple[int, ...], seq_buckets: tuple[int, ...],
                 pages_per_seq: int) -> None:
        self.page_size = page_size
        self.token_buckets = tuple(sorted(set(token_buckets)))
        self.seq_buckets = tuple(sorted(set(seq_buckets)))
        self.pages_per_seq = pages_per_seq

    def build(self, batch: list[SeqChunk]) -> ModelInputs:
        total = sum(c.num_tokens for c in batch)
        t_pad = bucket_for(total, self.token_buckets, "step of tokens")
        s_pad = bucket_for(len(batch), self.seq_buckets, "step of sequences")
        ps = self.page_size
        token_ids = np.zeros(t_pad, np.int32)
        positions = np.zeros(t_pad, np.int32)
        slot_mapping = np.full(t_pad, NULL_PAGE * ps, np.int32)
        kv_lens = np.zeros(s_pad, np.int32)
        page_indices = np.zeros((s_pad, self.pages_per_seq), np.int32)
        cu_q_lens = np.zeros(s_pad + 1, np.int32)
        logits_indices = np.zeros(s_pad, np.int32)
        sample_rows = []
        offset = 0
        for s, c in enumerate(batch):
            req = c.request
            n, start = c.num_tokens, c.start
            if n == 1 and req.num_output_tokens and start == req.num_tokens - 1:
                token_ids[offset] = req.output_token_ids[-1]
            else:
                token_ids[offset : offset + n] = req.all_token_ids[start : start + n]
            pos = np.arange(start, start + n, dtype=np.int32)
            positions[offset : offset + n] = pos
            table = np.asarray(c.page_table, np.int32)
            if len(table) > self.pages_per_seq:
                raise ValueError(f"request {c.request_id} holds {len(table)} pages > {self.pages_per_seq} per sequence")
            slot_mapping[offset : offset + n] = table[pos // ps] * ps + pos % ps
            page_indices[s, : len(table)] = table
            kv_lens[s] = start + n
            offset += n
            cu_q_lens[s + 1] = offset
            logits_indices[s] = offset - 1
            if c.sample:
                sample_rows.append(s)
        cu_q_lens[len(batch) + 1 :] = offset
        return ModelInputs(token_ids, positions, slot_mapping, kv_lens, page_indices, cu_q_lens,
                           np.array(len(batch), np.int32), logits_indices, sample_rows)
