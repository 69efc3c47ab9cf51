"""The odriver scheduler (EasyDeL oDriver baseline): one prefill per step mixed with the decodes, the 95%
decode-heavy rule; random workloads in the simulator with every plan checked."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from policy_checks import (
    FEW,
    PROPERTY,
    assert_admitted_in_arrival_order,
    assert_deterministic,
    assert_fast_forward_exact,
    assert_first_tokens_in_arrival_order,
    assert_terminates,
    long_decode_workload,
    scenarios,
    simulate,
)

from sim.config import SimConfig
from sim.workloads import Workload


@PROPERTY
@given(scenarios("odriver"))
def test_random_workloads_terminate_with_one_prefill_per_step(scenario: tuple[SimConfig, Workload]) -> None:
    run = simulate(*scenario)
    assert_terminates(run)
    assert_admitted_in_arrival_order(run)
    assert all(sum(p for *_, p in batch) <= 1 for batch in run.batches)
    assert (run.steps["num_prefill_seqs"] <= 1).all()


@PROPERTY
@given(scenarios("odriver", ample_pages=True, chunked=False, preemption_mode="recompute"))
def test_first_tokens_follow_arrival_order_without_preemption(scenario: tuple[SimConfig, Workload]) -> None:
    run = simulate(*scenario)
    assert run.requests["num_preemptions"].sum() == 0
    assert_first_tokens_in_arrival_order(run)


@FEW
@given(scenarios("odriver"))
def test_deterministic_and_fast_forward_exact(scenario: tuple[SimConfig, Workload]) -> None:
    assert_deterministic(*scenario)
    assert_fast_forward_exact(*scenario)


def test_prefill_rides_along_with_the_decodes() -> None:
    # Three requests at once: one prefill per step, and from the second step on it shares the batch with
    # the decodes of those already prefilled.
    wl = Workload(np.zeros(3), np.array([10, 12, 14]), np.array([8, 8, 8]))
    config = SimConfig(scheduler="odriver", page_size=4, num_pages=100, max_prefill_length=64, max_concurrent_prefill=4,
                       check_invariants=True)  # fmt: skip
    run = simulate(config, wl)
    assert_terminates(run)
    first = [sorted((rid, n) for rid, _, n, _ in batch) for batch in run.batches[:3]]
    assert first == [[("r0", 10)], [("r0", 1), ("r1", 12)], [("r0", 1), ("r1", 1), ("r2", 14)]]


def test_decode_heavy_running_set_admits_nothing() -> None:
    # max_concurrent_decodes 40: 38 running (95%) still admits, 39 (> 95%) does not, until one finishes.
    n = 41
    outputs = np.full(n, 100)
    outputs[0] = 200  # r1 (started one step after r0) finishes first
    wl = Workload(np.zeros(n), np.full(n, 2), outputs)
    config = SimConfig(scheduler="odriver", page_size=1, num_pages=1 + n * 202, max_prefill_length=8,
                       max_concurrent_decodes=40, check_invariants=True)  # fmt: skip
    run = simulate(config, wl, fast_forward=False)
    assert_terminates(run)
    assert run.steps["num_running"].max() == 39, "admission stops above 95% of max_concurrent_decodes"
    r39 = run.requests.loc[39]
    assert r39["first_scheduled_time"] > run.requests.loc[1, "finish_time"] - 1e-12


def test_steady_decodes_are_fast_forwarded_exactly() -> None:
    config = SimConfig(scheduler="odriver", page_size=16, num_pages=200, max_prefill_length=256)
    ff = assert_fast_forward_exact(config, long_decode_workload())
    assert (ff.steps["num_steps"] > 50).any()
