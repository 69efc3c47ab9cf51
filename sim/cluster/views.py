"""Time-exact replica state for state-dependent routers.

The engine commits a step (or a fast-forwarded decode run) when it starts, so a request finishing at the
end of an in-flight step is already recorded as done. A router deciding at time ``now`` must still count
it: ``outstanding = routed - done + (finished by the latest step, if that step ends after now)``.
Replicas push their numbers here after each change (O(1)), so a routing decision costs O(replicas).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from odrive.allocators.base import PageAllocator


class ClusterViews:
    """Implements :class:`sim.cluster.routers.ReplicaViews`; replica ``i`` updates entry ``i``."""

    def __init__(self, num_replicas: int) -> None:
        self.base = [0] * num_replicas  # routed - done
        self.last_end = [-math.inf] * num_replicas  # end of the latest step
        self.last_finished = [0] * num_replicas  # requests that step finished (done already, outstanding until end)
        self.allocators: Sequence[PageAllocator] = ()

    @property
    def num_replicas(self) -> int:
        return len(self.base)

    def report(self, replica: int, routed: int, done: int, last_end: float, last_finished: int) -> None:
        self.base[replica] = routed - done
        self.last_end[replica] = last_end
        self.last_finished[replica] = last_finished

    def outstanding(self, now: float) -> list[int]:
        return [b + f if now < e else b for b, e, f in zip(self.base, self.last_end, self.last_finished, strict=True)]

    def kv_load(self) -> list[float]:
        return [1.0 - a.num_free_pages / a.num_usable_pages for a in self.allocators]
