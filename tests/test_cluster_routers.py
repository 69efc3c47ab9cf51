"""Global routers: decisions, determinism, and the fast-forward bounds they promise."""

from __future__ import annotations

import numpy as np
import pytest

from sim.cluster.routers import ROUTERS, Arrivals, make_router
from sim.cluster.routers.base import argmin_from, replicas_of


class FakeViews:
    def __init__(self, outstanding: list[int], kv: list[float] | None = None) -> None:
        self.counts = outstanding
        self.kv = kv or [0.0] * len(outstanding)

    @property
    def num_replicas(self) -> int:
        return len(self.counts)

    def outstanding(self, now: float) -> list[int]:
        return list(self.counts)

    def kv_load(self) -> list[float]:
        return list(self.kv)


def arrivals(n: int, keys: np.ndarray | None = None) -> Arrivals:
    return Arrivals(np.arange(n, dtype=np.float64), np.full(n, 100), keys)


def test_registry_lists_the_five_routers_and_rejects_unknown_names():
    assert set(ROUTERS.names()) >= {"round-robin", "least-outstanding", "least-kv-load", "prefix-affinity",
                                    "power-of-two"}  # fmt: skip
    with pytest.raises(KeyError, match="unknown router 'nope'"):
        make_router("nope", 4)
    with pytest.raises(ValueError, match="at least one replica"):
        make_router("round-robin", 0)


def test_round_robin_plans_ahead():
    router = make_router("round-robin", 3)
    router.prepare(arrivals(7))
    assert router.plan().tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert [router.route(i, FakeViews([0, 0, 0]), 0.0) for i in range(4)] == [0, 1, 2, 0]
    assert [a.tolist() for a in replicas_of(router.plan(), 3)] == [[0, 3, 6], [1, 4], [2, 5]]


def test_prefix_affinity_keeps_a_key_on_one_replica_and_falls_back_without_keys():
    keys = np.array([5, 9, 5, 7, 9, 5] * 50)
    router = make_router("prefix-affinity", 8, seed=1)
    router.prepare(arrivals(len(keys), keys))
    plan = router.plan()
    for key in (5, 7, 9):
        assert len(set(plan[keys == key].tolist())) == 1
    many = make_router("prefix-affinity", 8)
    many.prepare(arrivals(4000, np.arange(4000)))
    counts = np.bincount(many.plan(), minlength=8)
    assert counts.min() > 400  # distinct keys spread evenly
    assert not router.notes
    blind = make_router("prefix-affinity", 3)
    blind.prepare(arrivals(5))
    assert blind.plan().tolist() == [0, 1, 2, 0, 1]
    assert "fell back to round-robin" in blind.notes[0]


def test_least_outstanding_picks_the_minimum_and_breaks_ties_from_a_seeded_start():
    router = make_router("least-outstanding", 4, seed=5)
    router.prepare(arrivals(400))
    assert router.plan() is None
    assert all(router.route(i, FakeViews([3, 1, 2, 1]), 0.0) in (1, 3) for i in range(50))
    picks = [router.route(i, FakeViews([0, 0, 0, 0]), 0.0) for i in range(400)]
    assert picks == [int(s) for s in router._starts]  # all tied: the drawn start
    assert np.bincount(picks, minlength=4).min() > 60
    other = make_router("least-outstanding", 4, seed=6)
    other.prepare(arrivals(400))
    assert [other.route(i, FakeViews([0, 0, 0, 0]), 0.0) for i in range(400)] != picks


@pytest.mark.parametrize("seed", range(6))
def test_least_outstanding_bound_never_passes_an_arrival_the_replica_could_win(seed):
    """Brute force: whatever finishes happen elsewhere, replica A (count fixed) wins no arrival before
    ``first_possible``; with no finishes, greedy routing reaches it no later than the scan allows."""
    rng = np.random.default_rng(seed)
    r, n = 6, 300
    router = make_router("least-outstanding", r, seed=seed)
    router.prepare(arrivals(n))
    counts = rng.integers(0, 5, size=r).tolist()
    for a in range(r):
        bound = router.first_possible(a, 10, FakeViews(counts), 0.0)
        assert bound >= 10
        for trial in range(20):  # random finish patterns (counts of others drop) and the real router
            c = list(counts)
            for i in range(10, bound):
                for b in range(r):
                    if b != a and c[b] > 0 and rng.random() < 0.1 * (trial % 3):
                        c[b] -= 1
                choice = router.route(i, FakeViews(c), 0.0)
                assert choice != a, (a, i, bound)
                c[choice] += 1
    # The bound is useful: replicas above the minimum are protected for several arrivals.
    views = FakeViews([5, 2, 4, 5, 1, 3])
    assert router.first_possible(0, 10, views, 0.0) >= 10 + (3 + 1 + 4 + 2)


def test_least_kv_load_compares_fractions():
    router = make_router("least-kv-load", 3)
    router.prepare(arrivals(20))
    assert router.route(0, FakeViews([0, 0, 0], [0.5, 0.2, 0.9]), 0.0) == 1
    assert router.first_possible(2, 17, FakeViews([0, 0, 0]), 0.0) == 17  # conservative


def test_power_of_two_draws_distinct_seeded_pairs_and_picks_the_less_loaded():
    n, r = 2000, 8
    a, b = make_router("power-of-two", r, seed=3), make_router("power-of-two", r, seed=3)
    a.prepare(arrivals(n))
    b.prepare(arrivals(n))
    pairs = [a.pair(i) for i in range(n)]
    assert pairs == [b.pair(i) for i in range(n)]
    assert all(x != y for x, y in pairs)
    assert np.bincount(np.array(pairs).ravel(), minlength=r).min() > 0.8 * 2 * n / r
    c = make_router("power-of-two", r, seed=4)
    c.prepare(arrivals(n))
    assert [c.pair(i) for i in range(n)] != pairs
    x, y = pairs[0]
    counts = [9] * r
    counts[y] = 1
    assert a.route(0, FakeViews(counts), 0.0) == y
    counts[y] = 9
    assert a.route(0, FakeViews(counts), 0.0) == x  # tie: the first drawn
    # The bound: the next arrival whose pair contains the replica.
    for replica in range(r):
        for start in (0, 5, 500, 1999):
            expected = next((i for i in range(start, n) if replica in pairs[i]), n)
            assert a.first_possible(replica, start, FakeViews(counts), 0.0) == expected


def test_single_replica_power_of_two_always_picks_it():
    router = make_router("power-of-two", 1)
    router.prepare(arrivals(5))
    assert [router.route(i, FakeViews([3]), 0.0) for i in range(5)] == [0] * 5


def test_argmin_from_wraps_around():
    assert argmin_from([1, 0, 0, 1], 2) == 2
    assert argmin_from([1, 0, 0, 1], 3) == 1
