"""Power of two choices: sample two replicas (seeded), send the arrival to the less loaded one."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim.cluster.routers.base import ROUTERS, Arrivals, ReplicaViews, Router


@ROUTERS.register("power-of-two")
@dataclass
class PowerOfTwoRouter(Router):
    """Two distinct replicas per request, drawn up front from ``seed``; the one with fewer outstanding
    requests wins (ties: the first drawn). Since the pairs are known in advance, a replica's horizon is
    the next arrival whose pair contains it."""

    def prepare(self, arrivals: Arrivals) -> None:
        n, r = len(arrivals), self.num_replicas
        rng = np.random.default_rng(self.seed)
        first = rng.integers(0, r, size=n)
        second = (first + 1 + rng.integers(0, max(r - 1, 1), size=n)) % r if r > 1 else first
        self._pairs = np.stack([first, second], axis=1).astype(np.int32)
        flat = self._pairs.reshape(-1)
        order = np.argsort(flat, kind="stable")  # per replica, its candidacies in arrival order
        self._candidacy = order // 2
        self._bounds = np.searchsorted(flat[order], np.arange(r + 1))
        self._cursor = self._bounds[:-1].copy()

    def pair(self, index: int) -> tuple[int, int]:
        a, b = self._pairs[index]
        return int(a), int(b)

    def route(self, index: int, views: ReplicaViews, now: float) -> int:
        a, b = self.pair(index)
        counts = views.outstanding(now)
        return b if counts[b] < counts[a] else a

    def first_possible(self, replica: int, next_index: int, views: ReplicaViews, now: float) -> int:
        cand, pos, end = self._candidacy, int(self._cursor[replica]), int(self._bounds[replica + 1])
        while pos < end and cand[pos] < next_index:
            pos += 1
        self._cursor[replica] = pos
        return int(cand[pos]) if pos < end else len(self._pairs)
