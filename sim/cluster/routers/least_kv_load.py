"""Least KV load: send each arrival to the replica whose KV page pool is least full."""

from __future__ import annotations

from dataclasses import dataclass

from sim.cluster.routers.base import ROUTERS, Arrivals, ReplicaViews, Router, argmin_from
from sim.cluster.routers.least_outstanding import tie_starts


@ROUTERS.register("least-kv-load")
@dataclass
class LeastKVLoadRouter(Router):
    """Smallest fraction of usable KV pages in use (so replicas of different sizes compare fairly); ties go
    to the first tied replica at or after a start drawn per request from ``seed``. Page use also grows
    inside decode runs (not only with arrivals), so every replica's horizon is the cluster's next arrival."""

    def prepare(self, arrivals: Arrivals) -> None:
        self._starts = tie_starts(self.seed, len(arrivals), self.num_replicas)

    def route(self, index: int, views: ReplicaViews, now: float) -> int:
        return argmin_from(views.kv_load(), self._starts[index])
