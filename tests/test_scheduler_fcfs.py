"""The FCFS scheduler, end to end in the simulator (with every plan checked) and step by step."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from policy_checks import assert_step_rows_within_limits, by_position, pages_for
from policy_checks import scenarios as policy_scenarios

from odrive.allocators import make_allocator
from odrive.core.engine import Engine
from odrive.core.executor import ExecuteResult, Executor, SeqChunk
from odrive.core.request import Request, RequestStatus
from odrive.core.sampling_params import SamplingParams
from odrive.schedulers import FCFSScheduler, SchedulerConfig, make_scheduler
from sim.config import SimConfig
from sim.simulator import Simulator
from sim.workloads import Workload

PROPERTY = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@dataclass
class Run:
    config: SimConfig
    workload: Workload
    requests: pd.DataFrame
    steps: pd.DataFrame
    engine: Engine


def simulate(config: SimConfig, workload: Workload) -> Run:
    sim = Simulator(config, workload)
    result = sim.run()
    return Run(config, workload, result.requests, result.steps, sim.engine)


def by_id(run: Run) -> pd.DataFrame:
    return by_position(run.requests)


def scenarios(ample_pages: bool = False) -> st.SearchStrategy[tuple[SimConfig, Workload]]:
    """A random FCFS config (no chunk_size, recompute preemption) and workload (5-40 requests)."""
    return policy_scenarios("fcfs", ample_pages=ample_pages, preemption_mode="recompute", chunked=False,
                            max_requests=40)  # fmt: skip


def assert_steps_within_limits(run: Run) -> None:
    """The shared step-table limits, and FCFS's stricter ones."""
    cfg, steps = run.config, run.steps
    assert_step_rows_within_limits(cfg, steps)
    usable = cfg.num_pages - 1  # type: ignore[operator]
    assert (steps["num_prefill_tokens"] <= steps["num_prefill_seqs"] * cfg.max_prefill_length).all()
    assert (steps["pages_used"] <= steps["pages_used_max"] + 1e-9).all()
    assert np.allclose(steps["pages_used"] + steps["pages_free"], usable)
    assert (steps["used_slots"] <= steps["allocated_slots"]).all()
    assert (steps["num_steps"] >= 1).all()
    # A fast-forwarded run is decode-only.
    assert (steps.loc[steps["num_steps"] > 1, "num_prefill_seqs"] == 0).all()


def assert_all_pages_free(run: Run) -> None:
    alloc = run.engine.allocator
    assert alloc.owners() == {}
    assert alloc.num_free_pages == alloc.num_usable_pages
    assert sorted(alloc.free_page_ids()) == list(range(1, alloc.num_pages))
    assert not run.engine.has_unfinished
    assert run.engine.scheduler.num_unfinished == 0
    assert run.engine.allocator.num_free_pages == run.engine.allocator.num_usable_pages


# --- properties over random workloads ---------------------------------------------------------------


@PROPERTY
@given(scenarios())
def test_every_request_ends_finished_or_rejected_with_reason(scenario: tuple[SimConfig, Workload]) -> None:
    config, workload = scenario
    run = simulate(config, workload)
    df = by_id(run)
    n = len(workload)
    assert len(run.requests) == n, "requests lost or duplicated"
    assert run.requests["request_id"].is_unique
    assert list(df.index) == list(range(n))

    prompts, outputs = workload.prompt_lens, workload.output_lens
    usable = config.num_pages - 1  # type: ignore[operator]
    too_long = prompts > config.max_prefill_length
    too_big = np.array([pages_for(p + o, config.page_size) > usable for p, o in zip(prompts, outputs, strict=True)])
    expect_rejected = too_long | too_big

    rejected = (df["finish_reason"] == "rejected").to_numpy()
    np.testing.assert_array_equal(rejected, expect_rejected)
    rej = df[rejected]
    assert (rej["status"] == "aborted").all()
    assert (rej["message"].str.len() > 0).all()
    assert (rej.loc[too_long[rejected], "message"].str.contains("max_prefill_length")).all()
    assert (rej.loc[~too_long[rejected], "message"].str.contains("pages")).all()
    assert rej["first_token_time"].isna().all() and (rej["num_output_tokens"] == 0).all()

    done = df[~rejected]
    assert (done["status"] == "finished").all()
    assert (done["finish_reason"] == "length").all()
    np.testing.assert_array_equal(done["num_output_tokens"].to_numpy(), outputs[~expect_rejected])
    np.testing.assert_allclose(done["arrival_time"].to_numpy(), workload.arrival_times[~expect_rejected])
    assert (done["first_scheduled_time"] >= done["arrival_time"]).all()
    assert (done["first_token_time"] > done["first_scheduled_time"]).all()
    assert (done["finish_time"] >= done["first_token_time"]).all()
    # At most one output token per request per step: count the steps inside each request's lifetime.
    starts = run.steps["time"].to_numpy()
    steps_before = np.concatenate([[0], np.cumsum(run.steps["num_steps"].to_numpy())])
    lo = np.searchsorted(starts, done["first_scheduled_time"].to_numpy(), side="left")
    hi = np.searchsorted(starts, done["finish_time"].to_numpy(), side="left")
    assert (steps_before[hi] - steps_before[lo] >= done["num_output_tokens"].to_numpy()).all()
    assert int(run.steps["num_preempted"].sum()) == int(df["num_preemptions"].sum())
    assert int(run.steps["num_finished"].sum()) == int((~rejected).sum())

    assert_steps_within_limits(run)
    assert_all_pages_free(run)


@PROPERTY
@given(scenarios(ample_pages=True))
def test_without_preemption_first_tokens_follow_arrival_order(scenario: tuple[SimConfig, Workload]) -> None:
    config, workload = scenario
    run = simulate(config, workload)
    df = by_id(run)
    assert (df["status"] == "finished").all()
    assert df["num_preemptions"].sum() == 0 and run.steps["num_preempted"].sum() == 0
    first_tokens = df["first_token_time"].to_numpy()
    first_scheduled = df["first_scheduled_time"].to_numpy()
    assert (np.diff(first_scheduled) >= 0).all(), "admitted out of arrival order"
    assert (np.diff(first_tokens) >= 0).all(), "first tokens out of arrival order"
    np.testing.assert_array_equal(df["num_output_tokens"].to_numpy(), workload.output_lens)
    assert_steps_within_limits(run)
    assert_all_pages_free(run)


@st.composite
def pressure(draw: st.DrawFn) -> tuple[SimConfig, Workload]:
    """Two requests arriving together, each fitting the pool alone, whose decodes cannot both fit.

    With page_size 1 and pool P: both prompts fit (2p <= P), each request fits alone (p + o <= P),
    and both at full length do not (2 (p + o - 1) > P), so the newer one must be preempted.
    """
    pool = draw(st.integers(6, 120))
    p = draw(st.integers(1, pool // 2))
    o_min = max(2, (pool + 2) // 2 - p + 1)  # 2 (p + o - 1) > pool
    o_max = pool - p
    o0 = draw(st.integers(o_min, o_max))
    o1 = draw(st.integers(o_min, o_max))
    extra = draw(st.lists(st.tuples(st.floats(0.0, 0.2), st.integers(1, pool // 2), st.integers(1, 20)), max_size=8))
    times = [0.0, 0.0] + sorted(t for t, _, _ in extra)
    prompts = [p, p] + [q for _, q, _ in extra]
    outputs = [o0, o1] + [min(o, pool - q) for _, q, o in extra]  # each fits the pool alone
    config = SimConfig(
        page_size=1,
        num_pages=pool + 1,
        allocator=draw(st.sampled_from(["free-list", "free-list-lifo"])),
        max_prefill_length=pool,
        max_concurrent_prefill=draw(st.integers(1, 3)),
        max_concurrent_decodes=draw(st.integers(2, 8)),
        check_invariants=True,
    )
    return config, Workload(np.array(times), np.array(prompts), np.array(outputs))


@PROPERTY
@given(pressure())
def test_pressure_preempts_newest_and_still_finishes_everything(scenario: tuple[SimConfig, Workload]) -> None:
    config, workload = scenario
    p, o0, o1 = int(workload.prompt_lens[0]), int(workload.output_lens[0]), int(workload.output_lens[1])
    assert 2 * (p + min(o0, o1) - 1) > config.num_pages - 1  # the scenario's premise
    run = simulate(config, workload)
    df = by_id(run)
    assert (df["status"] == "finished").all()
    np.testing.assert_array_equal(df["num_output_tokens"].to_numpy(), workload.output_lens)
    assert df["num_preemptions"].sum() >= 1
    assert run.steps["num_preempted"].sum() >= 1
    assert df.loc[0, "num_preemptions"] == 0, "the oldest request was preempted"
    assert_steps_within_limits(run)
    assert_all_pages_free(run)


# --- step-by-step behaviour ----------------------------------------------------------------------


class UnitExecutor(Executor):
    """Every step takes one second; produces no tokens (like the simulator)."""

    def execute(self, batch: list[SeqChunk]) -> ExecuteResult:
        return ExecuteResult(duration=1.0)


def make_engine(num_pages: int, page_size: int = 1, **limits: int) -> Engine:
    cfg = SchedulerConfig(**limits)  # type: ignore[arg-type]
    alloc = make_allocator("free-list", num_pages=num_pages, page_size=page_size)
    return Engine(make_scheduler("fcfs", cfg, alloc), UnitExecutor(), check_invariants=True)


def req(rid: str, prompt: int, max_tokens: int, t: float = 0.0) -> Request:
    return Request(rid, prompt, SamplingParams(max_tokens=max_tokens, ignore_eos=True), arrival_time=t)


def test_prefill_steps_pause_decodes_and_admit_in_order() -> None:
    eng = make_engine(num_pages=64, max_prefill_length=16, max_concurrent_prefill=1)
    for i in range(3):
        eng.add_request(req(f"r{i}", 4, 5))
    plans = []
    for t in range(3):
        out = eng.step(float(t))
        assert out is not None
        plans.append(dict(out.plan.num_scheduled_tokens))
    assert plans == [{"r0": 4}, {"r1": 4}, {"r2": 4}], "one prefill-only step per request, in arrival order"
    out = eng.step(3.0)
    assert out is not None and out.plan.num_scheduled_tokens == {"r0": 1, "r1": 1, "r2": 1}
    eng.add_request(req("r3", 6, 2), now=4.0)
    out = eng.step(4.0)
    assert out is not None and out.plan.num_scheduled_tokens == {"r3": 6}, "a new arrival's prefill goes first"


def test_concurrent_prefills_share_the_token_budget() -> None:
    eng = make_engine(num_pages=64, max_prefill_length=16, max_concurrent_prefill=3, max_num_batched_tokens=10)
    for i, prompt in enumerate([4, 4, 4, 4]):
        eng.add_request(req(f"r{i}", prompt, 3))
    out = eng.step(0.0)
    assert out is not None
    # r0 and r1 fit the budget (8); r2 (4 more) does not and waits rather than being split.
    assert out.plan.num_scheduled_tokens == {"r0": 4, "r1": 4}


def test_long_prompt_is_chunked_by_the_budget() -> None:
    eng = make_engine(num_pages=64, max_prefill_length=16, max_num_batched_tokens=6)
    eng.add_request(req("r0", 14, 2))
    chunks = []
    while True:
        out = eng.step(0.0)
        assert out is not None
        chunks.append(out.plan.num_scheduled_tokens["r0"])
        if out.new_token_ids or eng.requests["r0"].num_output_tokens:
            break
    assert chunks == [6, 6, 2]
    assert eng.requests["r0"].first_token_time is not None


def test_max_concurrent_decodes_holds_back_admission() -> None:
    eng = make_engine(num_pages=64, max_prefill_length=16, max_concurrent_decodes=2)
    for i in range(3):
        eng.add_request(req(f"r{i}", 2, 3))
    seen_running = []
    t = 0.0
    while eng.has_unfinished:
        out = eng.step(t)
        assert out is not None
        seen_running.append(len(eng.scheduler.running))
        assert len(eng.scheduler.running) <= 2
        t = out.end
    assert max(seen_running) == 2
    assert eng.metrics.requests_frame()["num_output_tokens"].tolist() == [3, 3, 3]


def test_out_of_pages_preempts_the_newest_running_request() -> None:
    # 10 one-token pages; two 4-token prompts fill 8; the decodes then run the pool dry.
    eng = make_engine(num_pages=11, max_prefill_length=16)
    eng.add_request(req("old", 4, 6))
    eng.add_request(req("new", 4, 6))
    sched = eng.scheduler
    preempted: list[str] = []
    t = 0.0
    while eng.has_unfinished:
        out = eng.step(t)
        assert out is not None
        preempted += out.plan.preempted
        if out.plan.preempted:
            victim = eng.requests["new"]
            assert victim.status is RequestStatus.PREEMPTED
            assert victim.num_computed_tokens == 0
            assert eng.allocator.page_table("new") == []
            assert sched.waiting[0] is victim, "the victim is queued first"
            assert "new" not in out.plan.num_scheduled_tokens
        t = out.end
    assert preempted and set(preempted) == {"new"}
    df = eng.metrics.requests_frame().set_index("request_id")
    assert df.loc["old", "num_preemptions"] == 0 and df.loc["new", "num_preemptions"] >= 1
    assert (df["num_output_tokens"] == 6).all()


def test_partial_reprefill_that_runs_out_of_pages_does_not_livelock() -> None:
    # Regression: a preempted request re-prefilled in max_prefill_length chunks ran out of pages
    # for its second chunk, preempted itself, and was re-admitted in the same plan (first chunk
    # again). The older request never decoded again; with check_invariants the plan failed with
    # 'preempted-not-running', without it the engine spun forever.
    wl = Workload(
        np.array([0.0, 0.0]),
        np.array([9, 97]),
        np.array([51, 38]),
    )
    config = SimConfig(page_size=4, num_pages=45, max_prefill_length=114, max_concurrent_decodes=4,
                       max_concurrent_prefill=2, check_invariants=True)  # fmt: skip
    run = simulate(config, wl)
    df = by_id(run)
    assert (df["status"] == "finished").all()
    assert df["num_output_tokens"].tolist() == [51, 38]
    assert df["num_preemptions"].sum() >= 1
    assert len(run.steps) < 400


def test_scheduler_forgets_removed_partial_prefill() -> None:
    eng = make_engine(num_pages=64, max_prefill_length=16, max_num_batched_tokens=4)
    eng.add_request(req("r0", 12, 2))
    eng.add_request(req("r1", 3, 2))
    out = eng.step(0.0)
    assert out is not None and out.plan.num_scheduled_tokens == {"r0": 4}
    assert eng.abort("r0", now=1.0)
    sched = eng.scheduler
    assert isinstance(sched, FCFSScheduler)
    out = eng.step(1.0)
    assert out is not None and out.plan.num_scheduled_tokens == {"r1": 3}
    t = out.end
    while eng.has_unfinished:
        out = eng.step(t)
        assert out is not None
        t = out.end
    assert eng.allocator.num_free_pages == eng.allocator.num_usable_pages


@pytest.mark.parametrize("page_size", [1, 4, 16])
def test_steady_decode_is_fast_forwarded_only_when_safe(page_size: int) -> None:
    config = SimConfig(page_size=page_size, num_pages=1 + pages_for(2 * 300, page_size), max_prefill_length=64,
                       max_concurrent_prefill=1, check_invariants=True)  # fmt: skip
    wl = Workload(np.array([0.0, 0.0]), np.array([40, 50]), np.array([200, 250]))
    run = simulate(config, wl)
    assert (run.steps["num_steps"] > 1).any(), "a long steady decode run should be fast-forwarded"
    # 2 prefill steps + one decode step per remaining output token of the longer request.
    assert run.steps["num_steps"].sum() == 2 + 249
    assert by_id(run)["num_output_tokens"].tolist() == [200, 250]
