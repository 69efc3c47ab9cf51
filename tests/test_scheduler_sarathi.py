"""The sarathi / token-budget scheduler (vLLM v1, Sarathi-Serve): random workloads in the simulator with
every plan checked, chunked prefill mixed with decodes, preemption, fast-forward."""

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

from odrive.schedulers import SCHEDULERS, TokenBudgetScheduler
from sim.config import SimConfig
from sim.workloads import Workload


def test_registered_under_both_names() -> None:
    assert SCHEDULERS.get("sarathi") is TokenBudgetScheduler
    assert SCHEDULERS.get("token-budget") is TokenBudgetScheduler


@PROPERTY
@given(scenarios("sarathi"))
def test_random_workloads_terminate_within_limits_and_chunks(scenario: tuple[SimConfig, object]) -> None:
    config, workload = scenario
    run = simulate(config, workload)  # type: ignore[arg-type]
    assert_terminates(run)
    assert_admitted_in_arrival_order(run)
    chunk = config.scheduler_config().chunk_limit
    assert all(n <= chunk for batch in run.batches for _, _, n, prefill in batch if prefill)


@PROPERTY
@given(scenarios("sarathi", ample_pages=True, chunked=False, preemption_mode="recompute"))
def test_first_tokens_follow_arrival_order_when_chunks_cover_prompts(scenario: tuple[SimConfig, object]) -> None:
    run = simulate(*scenario)  # type: ignore[arg-type]
    assert run.requests["num_preemptions"].sum() == 0
    assert_first_tokens_in_arrival_order(run)
    assert_terminates(run)


@FEW
@given(scenarios("sarathi"))
def test_deterministic_and_fast_forward_exact(scenario: tuple[SimConfig, object]) -> None:
    assert_deterministic(*scenario)  # type: ignore[arg-type]
    assert_fast_forward_exact(*scenario)  # type: ignore[arg-type]


def test_prefill_chunks_share_steps_with_decodes_and_honour_chunk_size() -> None:
    # r0 decodes for a long time; r1's 100-token prompt arrives meanwhile and is prefilled in 16-token chunks
    # in the same steps as r0's decodes.
    wl = Workload(np.array([0.0, 0.05]), np.array([8, 100]), np.array([200, 4]))
    config = SimConfig(scheduler="sarathi", page_size=4, num_pages=200, max_prefill_length=128, chunk_size=16,
                       max_num_batched_tokens=64, check_invariants=True)  # fmt: skip
    run = simulate(config, wl)
    assert_terminates(run)
    chunks = [(n, [c for c in batch if c[0] == "r0"]) for batch in run.batches for rid, _, n, p in batch
              if rid == "r1" and p]  # fmt: skip
    assert [n for n, _ in chunks] == [16] * 6 + [4]
    assert all(r0 == [("r0", r0[0][1], 1, False)] for _, r0 in chunks), "r0 decodes in every r1 prefill step"


def test_out_of_pages_preempts_the_newest_and_resumes_it() -> None:
    wl = Workload(np.array([0.0, 0.0]), np.array([4, 4]), np.array([6, 6]))
    config = SimConfig(scheduler="sarathi", page_size=1, num_pages=11, max_prefill_length=16, check_invariants=True)
    run = simulate(config, wl)
    assert_terminates(run)
    assert run.requests.loc[0, "num_preemptions"] == 0 and run.requests.loc[1, "num_preemptions"] >= 1


def test_steady_decodes_are_fast_forwarded_exactly() -> None:
    config = SimConfig(scheduler="sarathi", page_size=16, num_pages=200, max_prefill_length=256, check_invariants=True)
    ff = assert_fast_forward_exact(config, long_decode_workload())
    assert (ff.steps["num_steps"] > 50).any()
