"""Paged-attention kernels: KV-cache writes and ragged paged attention (reference, blocked, Pallas).

KV cache per layer: ``k_pages``/``v_pages`` ``[kv_heads, num_pages, page_size, head_dim]``; page 0 is the
null page that padding tokens write into and no real token reads.

Attention arguments: ``q`` ``[num_tokens, num_q_heads, head_dim]`` (rows may be padded), the pages, and a
``PagedBatch`` (``kv_lens``, ``page_indices``, ``cu_q_lens``, ``num_seqs``: where each sequence's rows and K/V are).
"""

from kernels.blocked import ragged_paged_attention_blocked
from kernels.dense import dense_causal_attention
from kernels.paged_batch import PagedBatch
from kernels.pallas_attention import ragged_paged_attention_pallas
from kernels.reference import ragged_paged_attention_reference
from kernels.registry import (
    ATTENTION_IMPLS,
    AttentionImpl,
    default_attention_impl_name,
    get_attention_impl,
    ragged_paged_attention,
)
from kernels.write_kv import write_kv_pages

__all__ = [
    "ATTENTION_IMPLS",
    "AttentionImpl",
    "PagedBatch",
    "default_attention_impl_name",
    "dense_causal_attention",
    "get_attention_impl",
    "ragged_paged_attention",
    "ragged_paged_attention_blocked",
    "ragged_paged_attention_pallas",
    "ragged_paged_attention_reference",
    "write_kv_pages",
]
