"""The priority scheduler (lower ``Request.priority`` value = more important): random workloads in the
simulator with every plan checked, admission strictly by priority, priority preemption."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from policy_checks import (
    FEW,
    PROPERTY,
    assert_deterministic,
    assert_fast_forward_exact,
    assert_terminates,
    long_decode_workload,
    scenarios,
    simulate,
)

from odrive.core.request import Request
from sim.config import SimConfig
from sim.simulator import Simulator
from sim.workloads import Workload


def watch_admissions(sim: Simulator, log: list[tuple[str, list[int]]]) -> None:
    """Record, at each admission, the admitted request and the priorities still waiting."""
    sched = sim.engine.scheduler
    admit = sched.admit

    def checked_admit(request: Request) -> None:
        admit(request)
        log.append((request.request_id, [w.priority for w in sched.waiting]))

    sched.admit = checked_admit  # type: ignore[method-assign]


@PROPERTY
@given(scenarios("priority", priorities=True))
def test_random_workloads_terminate_and_admit_strictly_by_priority(scenario: tuple[SimConfig, Workload]) -> None:
    config, workload = scenario
    log: list[tuple[str, list[int]]] = []
    run = simulate(config, workload, setup=lambda sim: watch_admissions(sim, log))
    assert_terminates(run)
    prio = {f"r{i}": int(p) for i, p in enumerate(workload.priorities)}  # type: ignore[arg-type]
    for rid, waiting in log:
        assert all(p >= prio[rid] for p in waiting), f"{rid} (priority {prio[rid]}) admitted while {waiting} waited"


@FEW
@given(scenarios("priority", priorities=True))
def test_deterministic_and_fast_forward_exact(scenario: tuple[SimConfig, Workload]) -> None:
    assert_deterministic(*scenario)
    assert_fast_forward_exact(*scenario)


def test_important_arrival_preempts_the_least_important_newest_runner() -> None:
    # r0 (priority 1) and r1 (priority 2) fill the running set; r2 (priority 0) arrives and takes r1's place
    # in the very next step; r1 resumes once a slot frees.
    wl = Workload(np.array([0.0, 0.0, 0.05]), np.array([8, 8, 8]), np.array([100, 100, 5]), np.array([1, 2, 0]))
    config = SimConfig(scheduler="priority", page_size=4, num_pages=200, max_prefill_length=16,
                       max_concurrent_decodes=2, check_invariants=True)  # fmt: skip
    run = simulate(config, wl)
    assert_terminates(run)
    df = run.requests
    assert df["num_preemptions"].tolist() == [0, 1, 0]
    starts = run.steps["time"].to_numpy()
    assert df.loc[2, "first_scheduled_time"] == starts[np.searchsorted(starts, 0.05)]
    assert df.loc[2, "finish_time"] < df.loc[1, "finish_time"]


def test_equal_priority_never_preempts_at_admission() -> None:
    wl = Workload(np.array([0.0, 0.0, 0.05]), np.array([8, 8, 8]), np.array([100, 100, 5]), np.array([1, 1, 1]))
    config = SimConfig(scheduler="priority", page_size=4, num_pages=200, max_prefill_length=16,
                       max_concurrent_decodes=2, check_invariants=True)  # fmt: skip
    run = simulate(config, wl)
    assert run.requests["num_preemptions"].sum() == 0
    assert run.requests.loc[2, "first_scheduled_time"] >= run.requests.loc[0, "finish_time"] - 1e-12


def test_out_of_pages_preempts_the_least_important_even_if_older() -> None:
    # 10 one-token pages: r0 (priority 3, older) and r1 (priority 0) cannot both reach full length.
    wl = Workload(np.array([0.0, 0.0]), np.array([4, 4]), np.array([6, 6]), np.array([3, 0]))
    config = SimConfig(scheduler="priority", page_size=1, num_pages=11, max_prefill_length=16, check_invariants=True)
    run = simulate(config, wl)
    assert_terminates(run)
    assert run.requests.loc[1, "num_preemptions"] == 0 and run.requests.loc[0, "num_preemptions"] >= 1


def test_steady_decodes_are_fast_forwarded_exactly() -> None:
    config = SimConfig(scheduler="priority", page_size=16, num_pages=200, max_prefill_length=256)
    ff = assert_fast_forward_exact(config, long_decode_workload())
    assert (ff.steps["num_steps"] > 50).any()
