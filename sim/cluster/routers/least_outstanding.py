"""Least outstanding requests: send each arrival to the replica with the fewest unfinished requests."""

from __future__ import annotations

from array import array
from bisect import bisect_right
from dataclasses import dataclass

import numpy as np

from sim.cluster.routers.base import ROUTERS, Arrivals, ReplicaViews, Router, argmin_from

SCAN = 512  # arrivals examined per horizon query (a shorter answer is still correct, only more conservative)


def tie_starts(seed: int, num_requests: int, num_replicas: int) -> array:
    """Per request, the replica where tie-breaking starts (seeded; a compact int array, cheap to index)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, num_requests]))
    return array("i", rng.integers(0, num_replicas, size=num_requests, dtype=np.int32).tobytes())


@ROUTERS.register("least-outstanding")
@dataclass
class LeastOutstandingRouter(Router):
    """Fewest requests routed and not yet finished (waiting + running). Ties go to the first tied replica at
    or after a start drawn per request from ``seed`` (random tie-breaking, known in advance).

    Fast-forward bound for replica A with ``c_A`` outstanding (constant during its decode run): other
    replicas' counts only fall (finishes) or rise by one per arrival routed to them. A can win arrival ``j``
    only if every other replica then has at least ``c_A`` (more than ``c_A`` if it precedes A in ``j``'s
    tie order), which needs ``R_j = sum_B max(0, c_A - c_B + [B precedes A])`` earlier arrivals to the
    others; so A's first possible arrival is the first ``j`` with ``R_j <= j - next``.
    """

    def prepare(self, arrivals: Arrivals) -> None:
        self._starts = tie_starts(self.seed, len(arrivals), self.num_replicas)

    def route(self, index: int, views: ReplicaViews, now: float) -> int:
        return argmin_from(views.outstanding(now), self._starts[index])

    def first_possible(self, replica: int, next_index: int, views: ReplicaViews, now: float) -> int:
        r = self.num_replicas
        counts = views.outstanding(now)
        mine = counts[replica]
        deficit = 0
        offsets = []  # replicas that beat A on a tie: how far before A they sit in the tie order
        for b, c in enumerate(counts):
            if c <= mine and b != replica:
                deficit += mine - c
                offsets.append((replica - b) % r)
        offsets.sort()
        starts = self._starts
        j = next_index + deficit
        end = min(j + SCAN, len(starts))
        while j < end:
            if deficit + bisect_right(offsets, (replica - starts[j]) % r) <= j - next_index:
                return j
            j += 1
        return j
