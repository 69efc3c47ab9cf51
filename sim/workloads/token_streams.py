"""Deterministic prompt token ids: streams of ids keyed by a segment key, and prompts built from them.

Token ids are a deterministic function of (stream, position), so equal segments give equal ids (and equal
prefix-cache block hashes) in every process. A prompt is stored as ``(stream, length)`` segments and built on
access (:class:`SegmentPrompts`), so many long prompts cost kilobytes, not their token arrays. Shared by the
synthetic shared-prefix workloads and by traces whose prompts are given as block hashes (Mooncake).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import overload

import numpy as np

VOCAB_SIZE = 32000
Segment = tuple[int, int]  # (stream, length)


def stream_id(*key: object) -> int:
    """A 64-bit stream id for a segment key, stable across processes."""
    return int.from_bytes(hashlib.blake2b(repr(key).encode(), digest_size=8).digest(), "little")


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, in place on a uint64 array (wrapping)."""
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


def stream_tokens(stream: int, length: int, vocab_size: int = VOCAB_SIZE) -> np.ndarray:
    """Token ids ``0 .. length-1`` of ``stream`` (splitmix64 of stream + position), int32 in [0, vocab_size)."""
    x = _mix(np.arange(length, dtype=np.uint64) + np.uint64(stream))
    return (x % np.uint64(vocab_size)).astype(np.int32)


def block_streams(block_ids: np.ndarray, salt: int) -> np.ndarray:
    """A 64-bit stream per integer block id (splitmix64 of id + salt): equal ids, equal streams, in any process."""
    return _mix(np.asarray(block_ids, dtype=np.int64).astype(np.uint64) + np.uint64(salt % 2**64))


def build_prompt(segments: Iterable[Segment], num_tokens: int | None, vocab_size: int) -> np.ndarray:
    """The token ids of concatenated segments, stopping after ``num_tokens`` (all for None)."""
    parts, left = [], num_tokens
    for stream, length in segments:
        if left is not None:
            if left <= 0:
                break
            length = min(length, left)
            left -= length
        parts.append(stream_tokens(stream, length, vocab_size))
    return np.concatenate(parts) if parts else np.zeros(0, np.int32)


class SegmentPrompts(Sequence[np.ndarray]):
    """Prompts as concatenations of token streams; ``prompts[i]`` builds request i's int32 token ids."""

    def __init__(self, segments: Sequence[tuple[Segment, ...]], vocab_size: int = VOCAB_SIZE) -> None:
        self.segments = list(segments)
        self.vocab_size = vocab_size

    def __len__(self) -> int:
        return len(self.segments)

    @overload
    def __getitem__(self, index: int) -> np.ndarray: ...
    @overload
    def __getitem__(self, index: slice) -> SegmentPrompts: ...
    def __getitem__(self, index: int | slice) -> np.ndarray | SegmentPrompts:
        if isinstance(index, slice):
            return SegmentPrompts(self.segments[index], self.vocab_size)
        return self.prefix(index, None)

    def prefix(self, index: int, num_tokens: int | None) -> np.ndarray:
        """The first ``num_tokens`` token ids of prompt ``index`` (all of them for None), building no more."""
        return build_prompt(self.segments[index], num_tokens, self.vocab_size)

    def lengths(self) -> np.ndarray:
        return np.array([sum(n for _, n in segs) for segs in self.segments], dtype=np.int64)


class BlockPrompts(Sequence[np.ndarray]):
    """Prompts made of fixed-size blocks named by ids (a prompt's last block may be partial): prompt i is the
    streams ``streams[offsets[i]:offsets[i+1]]``, ``block_size`` tokens each, cut at ``lengths[i]`` tokens.
    Flat arrays, so a trace of many long prompts costs a few bytes per block; ids are built on access."""

    def __init__(self, streams: np.ndarray, offsets: np.ndarray, lengths: np.ndarray, block_size: int,
                 vocab_size: int = VOCAB_SIZE) -> None:  # fmt: skip
        if len(offsets) != len(lengths) + 1:
            raise ValueError(f"need one more offset than prompts, got {len(offsets)} and {len(lengths)}")
        self.streams = streams
        self.offsets = offsets
        self.lengths = lengths
        self.block_size = block_size
        self.vocab_size = vocab_size

    def __len__(self) -> int:
        return len(self.lengths)

    @overload
    def __getitem__(self, index: int) -> np.ndarray: ...
    @overload
    def __getitem__(self, index: slice) -> BlockPrompts: ...
    def __getitem__(self, index: int | slice) -> np.ndarray | BlockPrompts:
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step != 1:
                raise ValueError("BlockPrompts slices must be contiguous")
            stop = max(start, stop)
            return BlockPrompts(self.streams, self.offsets[start : stop + 1], self.lengths[start:stop],
                                self.block_size, self.vocab_size)  # fmt: skip
        return self.prefix(index, None)

    def segments(self, index: int) -> list[Segment]:
        """Prompt ``index`` as ``(stream, length)`` segments."""
        if index < 0:
            index += len(self)
        streams = self.streams[self.offsets[index] : self.offsets[index + 1]].tolist()
        length, size = int(self.lengths[index]), self.block_size
        return [(s, min(size, length - k * size)) for k, s in enumerate(streams)]

    def prefix(self, index: int, num_tokens: int | None) -> np.ndarray:
        """The first ``num_tokens`` token ids of prompt ``index`` (all of them for None), building no more."""
        return build_prompt(self.segments(index), num_tokens, self.vocab_size)
