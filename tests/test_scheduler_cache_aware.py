"""The cache-aware scheduler: longest cached prefix first, with aging; random workloads in the simulator
with every plan checked."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from policy_checks import (
    FEW,
    PROPERTY,
    assert_admitted_in_arrival_order,
    assert_deterministic,
    assert_fast_forward_exact,
    assert_terminates,
    long_decode_workload,
    scenarios,
    simulate,
)

from odrive.allocators import FreeListAllocator
from odrive.core.request import Request
from sim.config import SimConfig
from sim.simulator import Simulator
from sim.workloads import Workload
from sim.workloads.shared_prefix import shared_prefix_workload


class ProbeAllocator(FreeListAllocator):
    """A free list whose cache probe reports a fixed number of tokens per request (it caches nothing)."""

    def __init__(self, num_pages: int, page_size: int, cached: dict[str, int]) -> None:
        super().__init__(num_pages, page_size)
        self.cached = cached

    def cached_prefix_length(self, request: Request) -> int:
        return self.cached.get(request.request_id, 0)


def use_probe(sim: Simulator, cached: dict[str, int]) -> None:
    old = sim.engine.allocator
    probe = ProbeAllocator(old.num_pages, old.page_size, cached)
    sim.engine.allocator = probe
    sim.engine.scheduler.allocator = probe


@PROPERTY
@given(scenarios("cache-aware"))
def test_without_a_cache_it_is_fcfs(scenario: tuple[SimConfig, Workload]) -> None:
    run = simulate(*scenario)
    assert_terminates(run)
    assert_admitted_in_arrival_order(run)


@PROPERTY
@given(
    scenarios("cache-aware", scheduler_kwargs=st.fixed_dictionaries({"aging": st.sampled_from([100.0, 1e3, 1e4])})),
    st.lists(st.integers(0, 96), min_size=30, max_size=30),
)
def test_longest_cached_prefix_first_within_the_aging_bound(scenario: tuple[SimConfig, Workload],
                                                            cached: list[int]) -> None:  # fmt: skip
    # Request i is admitted no later than any request j arriving at least cached_j / aging seconds after it.
    config, workload = scenario
    probe = {f"r{i}": c for i, c in enumerate(cached)}
    run = simulate(config, workload, setup=lambda sim: use_probe(sim, probe))
    assert_terminates(run)
    aging = dict(config.scheduler_kwargs)["aging"]
    df = run.requests[run.requests["finish_reason"] != "rejected"]
    t = df["arrival_time"].to_numpy()
    start = df["first_scheduled_time"].to_numpy()
    c = np.array([probe[r] for r in df["request_id"]], dtype=float)
    after = np.triu(np.ones((len(t), len(t)), dtype=bool), k=1)  # j after i in arrival (queue) order
    # late[i, j]: j arrived past its head start. At exactly the bound the scores tie (ties go by arrival), but
    # aging × arrival_time rounds either way there: the guarantee is for arrivals strictly past it.
    late = after & (t[None, :] > t[:, None] + c[None, :] / aging + 1e-9)
    assert not (late & (start[None, :] < start[:, None])).any(), "a request was overtaken past the bound"


@FEW
@given(scenarios("cache-aware"))
def test_deterministic_and_fast_forward_exact(scenario: tuple[SimConfig, Workload]) -> None:
    assert_deterministic(*scenario)
    assert_fast_forward_exact(*scenario)


def test_cached_request_jumps_the_queue() -> None:
    wl = Workload(np.zeros(3), np.array([32, 32, 32]), np.array([4, 4, 4]))
    config = SimConfig(scheduler="cache-aware", page_size=4, num_pages=100, max_prefill_length=64,
                       max_concurrent_prefill=1, check_invariants=True)  # fmt: skip
    run = simulate(config, wl, setup=lambda sim: use_probe(sim, {"r1": 8, "r2": 24}))
    order = run.requests.sort_values("first_scheduled_time", kind="stable").index.tolist()
    assert order == [2, 1, 0]


def test_runs_with_the_prefix_cache_allocator() -> None:
    wl = shared_prefix_workload(rate=200.0, num_requests=60, num_groups=3, prefix_len=64, suffix_len=16,
                                output_len=24, seed=1)  # fmt: skip
    for mode in ("recompute", "swap"):
        config = SimConfig(scheduler="cache-aware", allocator="prefix-cache", page_size=16, num_pages=40,
                           max_prefill_length=128, max_concurrent_decodes=16, preemption_mode=mode,
                           swap_space_pages=64, check_invariants=True)  # fmt: skip
        run = simulate(config, wl)
        assert (run.requests["status"] == "finished").all()
        assert run.requests["num_cached_tokens"].sum() > 0
        assert run.engine.allocator.num_free_pages == run.engine.allocator.num_usable_pages


def test_steady_decodes_are_fast_forwarded_exactly() -> None:
    config = SimConfig(scheduler="cache-aware", page_size=16, num_pages=200, max_prefill_length=256)
    ff = assert_fast_forward_exact(config, long_decode_workload())
    assert (ff.steps["num_steps"] > 50).any()
