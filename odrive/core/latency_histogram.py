"""A streaming distribution of latencies in bounded memory: exact count, mean, std, min and max; percentiles
from log-spaced buckets (each bucket also keeps its values' sum, so a percentile is the mean of the values in
its bucket: exact where a bucket holds one distinct value, within the bucket's relative width otherwise).

Made for per-token latencies (ITL), of which a long simulation has hundreds of millions: memory is one
fixed array of buckets, values may be added with weights (a decode step's duration is the gap of every
sequence in it), and histograms merge (one per replica, pooled for the cluster).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np

# Buckets [GAMMA^k, GAMMA^(k+1)) for k in [MIN_EXP, MAX_EXP): 1 ns .. ~12 days, 0.2 % wide.
GAMMA = 1.0 + 2.0**-9
_LOG_GAMMA = math.log(GAMMA)
MIN_EXP = math.floor(math.log(1e-9) / _LOG_GAMMA)
MAX_EXP = math.ceil(math.log(1e6) / _LOG_GAMMA)
NUM_BUCKETS = MAX_EXP - MIN_EXP + 2  # + one bucket below 1 ns (zero included) and one above the range


def bucket_of(value: float) -> int:
    """The bucket index of a value in seconds."""
    if value < 1e-9:
        return 0
    return min(NUM_BUCKETS - 1, max(1, math.floor(math.log(value) / _LOG_GAMMA) - MIN_EXP + 1))


def buckets_of(values: np.ndarray) -> np.ndarray:
    """:func:`bucket_of` of each value."""
    with np.errstate(divide="ignore", invalid="ignore"):
        index = np.floor(np.log(np.maximum(values, 1e-300)) / _LOG_GAMMA) - MIN_EXP + 1
    index = np.clip(index, 1, NUM_BUCKETS - 1).astype(np.int64)
    return np.where(values < 1e-9, 0, index)


class LatencyHistogram:
    """Weighted latencies (seconds): ``add(value, count)``, ``add_many(values, counts)``, ``merge(other)``; then
    ``count``, ``mean``, ``std`` (population, like ``numpy.std``), ``min``, ``max``, ``percentile(q)`` (linear
    between order statistics, like ``numpy.percentile``). Percentiles are within ``GAMMA - 1`` (0.2 %) of numpy's
    on the same values. Adds are buffered (a list append each) and binned in batches of ``FLUSH`` values."""

    FLUSH = 1 << 16

    def __init__(self) -> None:
        self._count = 0
        self._total = 0.0
        self._total_sq = 0.0
        self._min = math.inf
        self._max = -math.inf
        self._counts: np.ndarray | None = None  # allocated on the first value
        self._sums: np.ndarray | None = None
        self._values: list[float] = []  # single adds, not binned yet
        self._value_counts: list[int] = []
        self._batches: list[np.ndarray] = []  # add_many values with one count per batch, not binned yet
        self._batch_counts: list[int] = []
        self._weighted: list[tuple[np.ndarray, np.ndarray]] = []  # add_many values with a count each
        self._runs: list[tuple[Sequence[float] | np.ndarray, int, list[int]]] = []  # add_run calls, not binned yet
        self._num_pending = 0

    # --- adding ------------------------------------------------------------------------------------------
    def add(self, value: float, count: int = 1) -> None:
        """``count`` occurrences of ``value``."""
        self._values.append(value)
        self._value_counts.append(count)
        self._num_pending += 1
        if self._num_pending >= self.FLUSH:
            self._flush()

    def add_many(self, values: np.ndarray, counts: np.ndarray | int = 1) -> None:
        """Each ``values[i]`` ``counts[i]`` times (``counts`` may be one count for all)."""
        if isinstance(counts, int):
            self._batches.append(values)
            self._batch_counts.append(counts)
        elif len(counts) != len(values):
            raise ValueError(f"{len(values)} values but {len(counts)} counts")
        else:
            self._weighted.append((values, counts))
        self._num_pending += len(values)
        if self._num_pending >= self.FLUSH:
            self._flush()

    def add_run(self, ends: Sequence[float] | np.ndarray, num_steps: int, ran: list[int]) -> None:
        """The gaps inside a run of consecutive steps ending at ``ends[:num_steps]`` in which sequence ``i`` took
        part in the first ``ran[i]`` (>= 1) steps: ``ends[j] - ends[j - 1]`` once for each sequence that ran more
        than ``j`` steps, for ``j >= 1`` (the first step's gaps depend on each sequence's past: not included)."""
        if num_steps < 2:
            return
        self._runs.append((ends, num_steps, ran))
        self._num_pending += num_steps - 1
        if self._num_pending >= self.FLUSH:
            self._flush()

    def _run_values(self) -> tuple[np.ndarray, np.ndarray]:
        """The pending runs' gaps and counts, for all runs at once."""
        runs = self._runs
        steps = np.fromiter((s for _, s, _ in runs), dtype=np.int64, count=len(runs))
        sizes = np.fromiter((len(r) for _, _, r in runs), dtype=np.int64, count=len(runs))
        ends = np.concatenate([np.asarray(e[:s], dtype=np.float64) for e, s, _ in runs])
        starts = np.cumsum(steps) - steps  # each run's first position in ``ends``
        ran = np.fromiter(itertools.chain.from_iterable(r for _, _, r in runs), dtype=np.int64, count=int(sizes.sum()))
        run_of = np.repeat(np.arange(len(runs)), sizes)
        early = ran < steps[run_of]  # sequences that left the run before its end: from their step on, not counted
        stops = np.bincount(starts[run_of][early] + ran[early], minlength=len(ends))
        before = np.cumsum(stops)
        left = before - np.repeat(before[starts] - stops[starts], steps)  # sequences gone by each step of its run
        counts = np.repeat(sizes, steps) - left
        later = np.ones(len(ends), dtype=bool)
        later[starts] = False
        return np.diff(ends, prepend=0.0)[later], counts[later]

    def merge(self, other: LatencyHistogram) -> None:
        """Add every value of ``other``."""
        other._flush()
        self._flush()
        if other._counts is None or other._sums is None:
            return
        self._count += other._count
        self._total += other._total
        self._total_sq += other._total_sq
        self._min = min(self._min, other._min)
        self._max = max(self._max, other._max)
        counts, sums = self._arrays()
        counts += other._counts
        sums += other._sums

    def _arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if self._counts is None or self._sums is None:
            self._counts = np.zeros(NUM_BUCKETS, dtype=np.int64)
            self._sums = np.zeros(NUM_BUCKETS, dtype=np.float64)
        return self._counts, self._sums

    def _flush(self) -> None:
        if not self._num_pending:
            return
        values = [np.array(self._values, dtype=np.float64)]
        counts = [np.array(self._value_counts, dtype=np.int64)]
        if self._batches:
            sizes = np.fromiter(map(len, self._batches), dtype=np.int64, count=len(self._batches))
            values.append(np.concatenate(self._batches).astype(np.float64, copy=False))
            counts.append(np.repeat(np.array(self._batch_counts, dtype=np.int64), sizes))
        for v_, c_ in self._weighted:
            values.append(np.asarray(v_, dtype=np.float64).ravel())
            counts.append(np.asarray(c_, dtype=np.int64).ravel())
        if self._runs:
            run_values, run_counts = self._run_values()
            values.append(run_values)
            counts.append(run_counts)
        self._values, self._value_counts, self._batches, self._batch_counts, self._weighted = [], [], [], [], []
        self._runs = []
        self._num_pending = 0
        v, c = np.concatenate(values), np.concatenate(counts).astype(np.float64)  # float counts: fast dot products
        keep = c > 0
        if not keep.all():
            v, c = v[keep], c[keep]
        if not len(v):
            return
        self._count += int(c.sum())
        self._total += float(np.dot(v, c))
        self._total_sq += float(np.dot(v * v, c))
        self._min = min(self._min, float(v.min()))
        self._max = max(self._max, float(v.max()))
        bucket_counts, bucket_sums = self._arrays()
        index = buckets_of(v)
        bucket_counts += np.rint(np.bincount(index, weights=c, minlength=NUM_BUCKETS)).astype(np.int64)
        bucket_sums += np.bincount(index, weights=v * c, minlength=NUM_BUCKETS)

    # --- statistics ---------------------------------------------------------------------------------------
    @property
    def count(self) -> int:
        self._flush()
        return self._count

    @property
    def total(self) -> float:
        self._flush()
        return self._total

    @property
    def min(self) -> float:
        self._flush()
        return self._min if self._count else math.nan

    @property
    def max(self) -> float:
        self._flush()
        return self._max if self._count else math.nan

    @property
    def mean(self) -> float:
        self._flush()
        return self._total / self._count if self._count else math.nan

    @property
    def std(self) -> float:
        mean = self.mean
        if not self._count:
            return math.nan
        return math.sqrt(max(0.0, self._total_sq / self._count - mean * mean))

    def percentile(self, q: float) -> float:
        """The ``q``-th percentile (0-100), interpolated like ``numpy.percentile``'s default."""
        if not 0 <= q <= 100:
            raise ValueError(f"percentile must be in [0, 100], got {q}")
        if not self.count:
            return math.nan
        counts, sums = self._arrays()
        cumulative = np.cumsum(counts)
        rank = q / 100 * (self._count - 1)
        low, high = math.floor(rank), math.ceil(rank)
        a, b = (
            self._order_statistic(low, cumulative, counts, sums),
            self._order_statistic(high, cumulative, counts, sums),
        )
        return a + (rank - low) * (b - a)

    def _order_statistic(self, k: int, cumulative: np.ndarray, counts: np.ndarray, sums: np.ndarray) -> float:
        """The ``k``-th smallest value (0-based), as the mean of its bucket's values, within [min, max]."""
        if k == 0:
            return self._min
        if k == self._count - 1:
            return self._max
        bucket = int(np.searchsorted(cumulative, k, side="right"))
        return min(self._max, max(self._min, float(sums[bucket] / counts[bucket])))
