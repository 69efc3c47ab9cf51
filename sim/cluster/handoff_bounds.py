"""How far a decode replica may fast-forward: a lower bound on when the next request's K/V can reach it.

A request's K/V reaches a decode replica no earlier than the end of its prefill plus its transfer, which leaves
after the transfers already queued on its link and takes at least the link's latency plus bytes / bandwidth. Its
prefill ends no earlier than

- ``max(now, arrival, end of its prefill replica's step in flight) + min_prefill(tokens left)`` until the step that
  ends it is committed (``LatencyModel.min_prefill_seconds``: however a prompt is chunked and batched, its steps
  take at least that long), and ``arrival + min_prefill(prompt)`` before anything is known;
- ``t_p`` exactly once that step is committed (the engine commits a step when it starts).

Every such bound stays a bound as time goes on; recomputed later it can only be tighter. A :class:`BoundGroup`
keeps the requests that may go to one decode replica (its own under a state-independent decode router, else all)
in a heap by bound, recomputes only the one on top until the top is current, and lets a request in only once its
static bound could matter.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable

import numpy as np


class BoundGroup:
    """Lower bounds on the K/V arrival of a set of requests (``order``: their indices in arrival order).

    ``static_bound[i]``: arrival + min_prefill(prompt) + transfer; ``current_bound(i, now)``: the tightest bound
    known at ``now`` (never below an earlier one).
    """

    def __init__(
        self, order: np.ndarray, static_bound: np.ndarray, current_bound: Callable[[int, float], float]
    ) -> None:
        bounds = static_bound[order]
        self.order = order.tolist()
        self.static = bounds.tolist()
        self.suffix_min = np.minimum.accumulate(bounds[::-1])[::-1].tolist() + [math.inf]
        self.current_bound = current_bound
        self.pos = 0  # requests before pos in ``order`` are in the heap (or gone)
        self.heap: list[tuple[float, int]] = []

    def bound(self, now: float, handed: bytearray) -> float:
        """The earliest possible K/V arrival of a request of the group not yet handed to a decode replica
        (``handed[i]``: its prefill ended, or it never comes)."""
        heap, order, suffix = self.heap, self.order, self.suffix_min
        while True:
            while heap and handed[heap[0][1]]:
                heapq.heappop(heap)
            top = heap[0][0] if heap else math.inf
            if suffix[self.pos] < top:  # a request not yet in could come first: let it in
                heapq.heappush(heap, (self.static[self.pos], order[self.pos]))
                self.pos += 1
                continue
            if not heap:
                return math.inf
            bound, i = heap[0]
            later = self.current_bound(i, now)
            if later <= bound:
                return bound
            heapq.heapreplace(heap, (later, i))
