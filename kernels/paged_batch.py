"""The per-sequence metadata of a ragged paged batch: what every attention kernel reads besides q and the pages."""

from __future__ import annotations

from typing import NamedTuple

import jax


class PagedBatch(NamedTuple):
    """Where each sequence's query rows and K/V live (a pytree: pass it through ``jax.jit`` as one argument).

    ``kv_lens`` ``[max_seqs]``: context length per sequence including this step's tokens; ``page_indices``
    ``[max_seqs, pages_per_seq]``; ``cu_q_lens`` ``[max_seqs + 1]``: sequence ``s`` owns query rows
    ``cu_q_lens[s]:cu_q_lens[s+1]``; ``num_seqs`` scalar: sequences ``>= num_seqs`` are padding.
    """

    kv_lens: jax.Array
    page_indices: jax.Array
    cu_q_lens: jax.Array
    num_seqs: jax.Array

    def offset_pages(self, offset: jax.Array | int) -> PagedBatch:
        """The same batch with every page id shifted by ``offset`` (a layer's range of a shared page pool)."""
        return self._replace(page_indices=self.page_indices + offset)
