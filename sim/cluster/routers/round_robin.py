"""Round-robin: request ``i`` goes to replica ``i mod R`` (state-independent, routed ahead)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim.cluster.routers.base import ROUTERS, Arrivals, ReplicaViews, Router


@ROUTERS.register("round-robin")
@dataclass
class RoundRobinRouter(Router):
    """Cycles through the replicas in arrival order."""

    def prepare(self, arrivals: Arrivals) -> None:
        self._n = len(arrivals)

    def plan(self) -> np.ndarray:
        return np.arange(self._n, dtype=np.int64) % self.num_replicas

    def route(self, index: int, views: ReplicaViews, now: float) -> int:
        return index % self.num_replicas
