"""Prefix affinity: requests sharing a prefix (or group id) go to the same replica, for cache reuse."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim.cluster.routers.base import ROUTERS, Arrivals, ReplicaViews, Router

_GOLDEN = 0x9E3779B97F4A7C15


def spread(keys: np.ndarray, num_replicas: int, seed: int) -> np.ndarray:
    """A stable, seeded hash of integer keys onto ``0 .. num_replicas - 1`` (splitmix64 finaliser)."""
    x = keys.astype(np.uint64) + np.uint64((seed * _GOLDEN) % 2**64)  # uint64 arrays wrap around silently
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    x = x ^ (x >> np.uint64(31))
    return (x % np.uint64(num_replicas)).astype(np.int64)


@ROUTERS.register("prefix-affinity")
@dataclass
class PrefixAffinityRouter(Router):
    """Hashes each request's prefix key (a hash of its first prompt tokens, or a workload group id) to a
    replica. Without keys it falls back to round-robin and records a note, as it does when one key holds
    more than half of the requests (every prompt starting alike: key on a longer prefix). State-independent."""

    uses_prefix_keys = True

    def prepare(self, arrivals: Arrivals) -> None:
        n = len(arrivals)
        if arrivals.prefix_keys is None:
            self.notes.append(
                "prefix-affinity: the workload carries no prompt token ids or prefix/group ids; "
                "fell back to round-robin"
            )
            self._plan = np.arange(n, dtype=np.int64) % self.num_replicas
        else:
            keys = np.asarray(arrivals.prefix_keys)
            self._plan = spread(keys, self.num_replicas, self.seed)
            top = int(np.unique(keys, return_counts=True)[1].max()) if n else 0
            if self.num_replicas > 1 and top > n / 2:
                self.notes.append(
                    f"prefix-affinity: one prefix key holds {top / n:.0%} of the requests, so one replica gets them "
                    "all; key on a longer prefix (affinity_tokens, --affinity-tokens)"
                )

    def plan(self) -> np.ndarray:
        return self._plan

    def route(self, index: int, views: ReplicaViews, now: float) -> int:
        return int(self._plan[index])
