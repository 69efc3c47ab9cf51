"""How far a decode replica may fast-forward: a lower bound on when the next request's K/V can reach it.

A request's K/V reaches a decode replica no earlier than the end of its prefill plus its transfer on an idle link
(the link's latency plus bytes / bandwidth). Its prefill ends no earlier than

- ``arrival + min_prefill(prompt)`` before it arrives (``LatencyModel.min_prefill_seconds``: however a prompt is
  chunked and batched, its steps take at least that long);
- ``max(now, end of its prefill replica's step in flight) + min_prefill(tokens left)`` while it waits or is part
  prefilled (its next step starts after the one in flight);
- ``t_p`` exactly once the step that ends its prefill is committed (the engine commits a step when it starts).

A :class:`BoundGroup` tracks the requests that may go to one decode replica (its own under a state-independent
decode router, else all) and answers the earliest of those bounds.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable

import numpy as np

SCAN_LIMIT = 64  # waiting requests bounded one by one; beyond, one coarse bound for all of them
AHEAD = 4  # the next arrivals bounded one by one (their prefill replica may be busy beyond their arrival)


class BoundGroup:
    """Lower bounds on the K/V arrival of a set of requests (``order``: their indices in arrival order).

    ``static_bound[i]``: arrival + min_prefill(prompt) + transfer; ``waiting_bound(i, now)``: the bound of a request
    whose prefill end is not yet committed (before or after its arrival); ``coarse``: ``now + coarse`` bounds any
    of them; ``committed_bound(i)``: the bound of a committed one now (transfers queued since only delay it).
    """

    def __init__(
        self, order: np.ndarray, arrival_times: np.ndarray, static_bound: np.ndarray, coarse: float,
        waiting_bound: Callable[[int, float], float], committed_bound: Callable[[int], float],
    ) -> None:  # fmt: skip
        self.order = order.tolist()
        self.times = arrival_times[order].tolist()
        bounds = static_bound[order]
        self.suffix_min = (np.minimum.accumulate(bounds[::-1])[::-1]).tolist() + [math.inf]
        self.coarse = coarse
        self.waiting_bound = waiting_bound
        self.committed_bound = committed_bound
        self.pos = 0  # requests before pos in ``order`` have arrived
        self.waiting: list[int] = []  # arrived, prefill end not yet committed (some may be settled: dropped lazily)
        self.committed: list[tuple[float, int]] = []  # heap of (t_p + transfer, request)

    def commit(self, bound: float, index: int) -> None:
        """Request ``index``'s last prefill step was committed: its K/V arrives at ``bound`` or later."""
        heapq.heappush(self.committed, (bound, index))

    def bound(self, now: float, settled: bytearray, handed: bytearray) -> float:
        """The earliest possible K/V arrival of a request of the group not yet handed to a decode replica.
        ``settled[i]``: its prefill end is known or it never comes; ``handed[i]``: its prefill ended or it never
        comes."""
        heap = self.committed
        while heap:
            bound, i = heap[0]
            if handed[i]:
                heapq.heappop(heap)
                continue
            later = self.committed_bound(i)
            if later <= bound:
                break
            heapq.heapreplace(heap, (later, i))
        best = heap[0][0] if heap else math.inf
        order, times, pos, waiting = self.order, self.times, self.pos, self.waiting
        while pos < len(order) and times[pos] <= now:
            waiting.append(order[pos])
            pos += 1
        self.pos = pos
        end = min(pos + AHEAD, len(order))
        for k in range(pos, end):  # the next arrivals one by one, then the rest by their static bounds
            b = self.waiting_bound(order[k], now)
            if b < best:
                best = b
        if self.suffix_min[end] < best:
            best = self.suffix_min[end]
        if waiting:
            waiting[:] = [i for i in waiting if not settled[i]]
            if len(waiting) > SCAN_LIMIT:
                return min(best, now + self.coarse)
            for i in waiting:
                b = self.waiting_bound(i, now)
                if b < best:
                    best = b
        return best
