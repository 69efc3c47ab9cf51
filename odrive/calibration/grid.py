"""The shapes a profile measures: prefill chunks, decode batches, mixed steps, per page size; and the requests
in the state a shape describes (:func:`build_batch`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from odrive.allocators.base import PageAllocator
from odrive.core.executor import SeqChunk
from odrive.core.request import Request
from odrive.core.sampling_params import SamplingParams


@dataclass(frozen=True)
class GridPoint:
    """One step shape: sequence ``i`` computes ``q_lens[i]`` new tokens of a ``kv_lens[i]``-token context."""

    kind: str  # "prefill" | "decode" | "mixed"
    page_size: int
    q_lens: tuple[int, ...]
    kv_lens: tuple[int, ...]

    @property
    def num_tokens(self) -> int:
        return sum(self.q_lens)


def _spread(n: int, top: int, low: int = 16) -> tuple[int, ...]:
    """``n`` contexts spread evenly over ``[min(low, top), top]`` (longest last), so max != mean."""
    return tuple(int(x) for x in np.linspace(min(low, top), top, n).round())


@dataclass(frozen=True)
class ProfileGrid:
    """Grid axes. Decode batches come in two flavours: every context equal, and contexts spread from 16 up
    to the given length (what real batches look like: the kernel's cost follows the longest one)."""

    page_sizes: tuple[int, ...] = (16, 8, 32)
    prefill_chunks: tuple[int, ...] = (8, 12, 16, 24, 32, 48, 64, 96, 128, 160, 192, 256, 320, 384, 512)
    prefill_cached: tuple[tuple[int, int], ...] = ((32, 256), (128, 256), (128, 640), (256, 512))
    prefill_multi: tuple[tuple[int, int], ...] = ((2, 24), (2, 100), (3, 64), (4, 100), (2, 200))
    decode_batch_sizes: tuple[int, ...] = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
    decode_contexts: tuple[int, ...] = (40, 300, 700, 1000)
    mixed: tuple[tuple[int, int, int], ...] = ((32, 4, 200), (128, 8, 300), (64, 16, 480), (256, 2, 700))
    secondary_decode_batch_sizes: tuple[int, ...] = (1, 4, 12, 32)  # page sizes after the first
    secondary_prefill_chunks: tuple[int, ...] = (16, 64, 160, 512)
    repeats: int = 5
    burst: int = 3  # timed back-to-back runs per point per round (median kept)
    settle: int = 5  # untimed runs before them
    warmup: int = 2
    engine_batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    engine_prompt_len: int = 48
    engine_output_len: int = 24
    engine_repeats: int = 3
    swap_pages: tuple[int, ...] = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)  # one request's pages copied (swap)
    max_length: int = 1024
    max_prefill_length: int = 512
    max_concurrent_decodes: int = 32
    seed: int = 0
    extra: dict = field(default_factory=dict)

    def points(self) -> list[GridPoint]:
        out: list[GridPoint] = []
        for i, ps in enumerate(self.page_sizes):
            chunks = self.prefill_chunks if i == 0 else self.secondary_prefill_chunks
            batches = self.decode_batch_sizes if i == 0 else self.secondary_decode_batch_sizes
            out += [GridPoint("prefill", ps, (q,), (q,)) for q in chunks if q <= self.max_prefill_length]
            if i == 0:
                out += [
                    GridPoint("prefill", ps, (q,), (q + c,)) for q, c in self.prefill_cached if q + c <= self.max_length
                ]
                out += [
                    GridPoint("prefill", ps, (q,) * n, (q,) * n)
                    for n, q in self.prefill_multi
                    if n * q <= self.max_prefill_length
                ]
                out += [
                    GridPoint("mixed", ps, (q,) + (1,) * b, (q,) + _spread(b, c))
                    for q, b, c in self.mixed
                    if b + 1 <= self.max_concurrent_decodes
                ]
            for b in batches:
                if b > self.max_concurrent_decodes:
                    continue
                for c in self.decode_contexts:
                    if c > self.max_length:
                        continue
                    out.append(GridPoint("decode", ps, (1,) * b, (c,) * b))
                    if b > 1:
                        out.append(GridPoint("decode", ps, (1,) * b, _spread(b, c)))
        return list(dict.fromkeys(out))  # drop duplicates, keep order

    def to_dict(self) -> dict:
        return asdict(self)


def quick_grid(**overrides: object) -> ProfileGrid:
    """A few points on one page size: seconds to run (tests, smoke checks)."""
    kw: dict = dict(
        page_sizes=(16,),
        prefill_chunks=(8, 32),
        prefill_cached=(),
        prefill_multi=(),
        decode_batch_sizes=(1, 4),
        decode_contexts=(20, 300),
        mixed=(),
        swap_pages=(1, 4, 8),
        repeats=3,
        burst=2,
        settle=2,
        warmup=1,
        engine_batch_sizes=(2,),
        engine_output_len=6,
        engine_prompt_len=16,
        engine_repeats=1,
        max_length=512,
        max_prefill_length=64,
        max_concurrent_decodes=4,
    )
    kw.update(overrides)
    return ProfileGrid(**kw)  # type: ignore[arg-type]


def build_batch(
    point: GridPoint, allocator: PageAllocator, vocab_size: int, rng: np.random.Generator
) -> list[SeqChunk]:
    """Requests in the state the point describes, with pages from ``allocator``."""
    batch = []
    for s, (q, kv) in enumerate(zip(point.q_lens, point.kv_lens, strict=True)):
        rid = f"p{s}"
        params = SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True)
        if q == 1 and kv > 1:  # a decode: the last output token is the input
            req = Request.from_tokens(rid, rng.integers(3, vocab_size, kv - 1).tolist(), params)
            req.output_token_ids.append(int(rng.integers(3, vocab_size)))
            req.num_output_tokens = 1
        else:
            req = Request.from_tokens(rid, rng.integers(3, vocab_size, kv).tolist(), params)
        req.num_computed_tokens = kv - q
        if not allocator.allocate(rid, kv):
            raise RuntimeError(f"profile pool too small for {point}")
        batch.append(SeqChunk(req, kv - q, q, allocator.page_table(rid), True))
    return batch
