"""Padding buckets: the one lookup (a length to the smallest bucket that holds it) and the power-of-two ladders.

The real engine's ``BatchBuilder`` pads a step's tokens and sequences with :func:`bucket_for`, the schedulers pad a
prefill chunk with it (``SchedulerConfig.bucket_for``, the simulator's padding cost), and the calibrated latency
model's ``EngineGeometry`` predicts the same padding with it. Past the last bucket there is no compiled shape:
:func:`bucket_for` raises :class:`BucketOverflow` (a ``ValueError``). The engine never gets there — a prompt longer
than ``max_prefill_length`` (the last prefill bucket) is rejected at admission, and no step schedules more tokens
or sequences than the largest token and sequence buckets.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence


class BucketOverflow(ValueError):
    """A length past the last bucket: no padded shape holds it (the request or step is too large)."""


def bucket_for(n: int, buckets: Sequence[int], what: str = "length") -> int:
    """The smallest of the sorted ``buckets`` that is ``>= n``; :class:`BucketOverflow` past the last one."""
    i = bisect.bisect_left(buckets, n)
    if i == len(buckets):
        raise BucketOverflow(f"{what} {n} exceeds the largest bucket {buckets[-1]}")
    return buckets[i]


def power_of_two_buckets(limit: int, smallest: int = 8) -> tuple[int, ...]:
    """Powers of two from ``smallest`` below ``limit``, then ``limit`` itself (always the last bucket)."""
    out, b = [], smallest
    while b < limit:
        out.append(b)
        b *= 2
    out.append(limit)
    return tuple(sorted(set(out)))


def step_buckets(prefill_lengths: Sequence[int], token_budget: int, max_seqs: int) -> tuple[tuple[int, ...], ...]:
    """(token buckets, sequence buckets) of the real engine's steps: every power of two up to ``token_budget``
    (from 1, so a decode of a few sequences runs a few rows, not eight) plus the prefill lengths; every power of
    two up to ``max_seqs`` sequences."""
    tokens = tuple(sorted({*prefill_lengths, *power_of_two_buckets(token_budget, smallest=1)}))
    return tokens, power_of_two_buckets(max_seqs, smallest=1)
