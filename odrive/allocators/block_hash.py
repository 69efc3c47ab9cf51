"""Chained block hashes: a full page's key is hash(parent key, the page's token ids), stable across processes."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from odrive.core.request import Request

ROOT_HASH = bytes(16)  # the parent key of a sequence's first block
HASH_BYTES = 16


def hash_block(parent: bytes, token_ids: Sequence[int] | np.ndarray) -> bytes:
    """BLAKE2b-128 of ``parent`` and the token ids as little-endian int64 (lists and int32 arrays agree)."""
    digest = hashlib.blake2b(parent, digest_size=HASH_BYTES)
    digest.update(np.asarray(token_ids, dtype="<i8").tobytes())
    return digest.digest()


def num_known_tokens(request: Request) -> int:
    """Tokens of ``request`` whose ids are known: prompt plus sampled outputs (0 for simulated requests)."""
    if request.prompt_token_ids is None:
        return 0
    return len(request.prompt_token_ids) + len(request.output_token_ids)


def block_tokens(request: Request, index: int, page_size: int) -> Sequence[int] | np.ndarray:
    """Token ids of block ``index`` of ``request`` (prompt then outputs); the block must be known."""
    prompt = request.prompt_token_ids
    assert prompt is not None
    start, stop = index * page_size, (index + 1) * page_size
    n = len(prompt)
    if stop <= n:
        return prompt[start:stop]
    outputs = request.output_token_ids
    return [*prompt[start:n], *outputs[max(0, start - n) : stop - n]]


def extend_block_hashes(hashes: list[bytes], request: Request, num_blocks: int, page_size: int) -> list[bytes]:
    """Extend ``hashes`` (the chained keys of ``request``'s first blocks) in place to ``num_blocks``
    blocks, or fewer where token ids are unknown; returns it. Blocks inside a numpy prompt are hashed from one
    byte copy of it (the same keys as :func:`hash_block`, without a conversion per block)."""
    num_blocks = min(num_blocks, num_known_tokens(request) // page_size)
    parent = hashes[-1] if hashes else ROOT_HASH
    first = len(hashes)
    prompt = request.prompt_token_ids
    if isinstance(prompt, np.ndarray) and first < min(num_blocks, len(prompt) // page_size):
        stop = min(num_blocks, len(prompt) // page_size)
        data = memoryview(np.asarray(prompt[first * page_size : stop * page_size], dtype="<i8").tobytes())
        width = 8 * page_size
        for offset in range(0, (stop - first) * width, width):
            digest = hashlib.blake2b(parent, digest_size=HASH_BYTES)
            digest.update(data[offset : offset + width])
            parent = digest.digest()
            hashes.append(parent)
        first = stop
    for index in range(first, num_blocks):
        parent = hash_block(parent, block_tokens(request, index, page_size))
        hashes.append(parent)
    return hashes
