"""The decode-priority scheduler: decodes first, prefills with what is left; random workloads in the
simulator with every plan checked."""

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
@given(scenarios("decode-priority"))
def test_random_workloads_terminate_within_limits(scenario: tuple[SimConfig, Workload]) -> None:
    run = simulate(*scenario)
    assert_terminates(run)
    assert_admitted_in_arrival_order(run)


@PROPERTY
@given(scenarios("decode-priority", ample_pages=True, chunked=False, preemption_mode="recompute"))
def test_first_tokens_follow_arrival_order_without_preemption(scenario: tuple[SimConfig, Workload]) -> None:
    run = simulate(*scenario)
    assert run.requests["num_preemptions"].sum() == 0
    assert_first_tokens_in_arrival_order(run)


@PROPERTY
@given(scenarios("decode-priority"))
def test_no_prefill_runs_while_a_decode_waits(scenario: tuple[SimConfig, Workload]) -> None:
    run = simulate(*scenario)
    for batch, idle in zip(run.batches, run.idle_decodes, strict=True):
        if any(p for *_, p in batch):
            assert idle == 0, f"a prefill ran while {idle} running decodes were left out: {batch}"


@FEW
@given(scenarios("decode-priority"))
def test_deterministic_and_fast_forward_exact(scenario: tuple[SimConfig, Workload]) -> None:
    assert_deterministic(*scenario)
    assert_fast_forward_exact(*scenario)


def test_prefill_waits_for_the_budget_the_decodes_leave() -> None:
    # Four decoders, budget 6: a 40-token prompt arriving later gets 2-token chunks, never a decode's slot.
    wl = Workload(np.array([0.0] * 4 + [0.03]), np.array([4, 4, 4, 4, 40]), np.array([60, 60, 60, 60, 2]))
    config = SimConfig(scheduler="decode-priority", page_size=4, num_pages=200, max_prefill_length=64,
                       max_num_batched_tokens=6, max_concurrent_decodes=8, check_invariants=True)  # fmt: skip
    run = simulate(config, wl)
    assert_terminates(run)
    chunks = [(n, batch) for batch in run.batches for rid, _, n, p in batch if rid == "r4" and p]
    assert chunks and all(n == 2 for n, _ in chunks[:-1])
    assert all(sum(not p for *_, p in batch) == 4 for _, batch in chunks)


def test_steady_decodes_are_fast_forwarded_exactly() -> None:
    config = SimConfig(scheduler="decode-priority", page_size=16, num_pages=200, max_prefill_length=256)
    ff = assert_fast_forward_exact(config, long_decode_workload())
    assert (ff.steps["num_steps"] > 50).any()
