"""The shared step loop: determinism, fast-forward equivalence, abort, admission, token handling,
and invariant checks of user-defined schedulers."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from odrive.allocators import make_allocator
from odrive.core.decode_runs import steps_before
from odrive.core.engine import Engine, StepOutcome
from odrive.core.executor import ExecuteResult, Executor, SeqChunk
from odrive.core.request import FinishReason, Request, RequestStatus
from odrive.core.sampling_params import SamplingParams
from odrive.errors import InvariantViolation
from odrive.schedulers import FCFSScheduler, Scheduler, SchedulerConfig, StepPlan, make_scheduler
from sim.config import SimConfig
from sim.executor import SHORT_CHAIN_STEPS, SimExecutor
from sim.simulator import SimResult, Simulator, build_engine, simulate
from sim.workloads import Workload, poisson_workload
from sim.workloads.lengths import Uniform

PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def pages_for(num_tokens: int, page_size: int) -> int:
    return -(-num_tokens // page_size)


class StepByStepSimExecutor(SimExecutor):
    """The simulator's executor with fast-forwarding of steady decode runs switched off."""

    supports_decode_runs = False


def run_sim(config: SimConfig, workload: Workload, *, fast_forward: bool = True) -> SimResult:
    sim = Simulator(config, workload)
    if not fast_forward:
        ex = sim.engine.executor
        assert isinstance(ex, SimExecutor)
        sim.engine.executor = StepByStepSimExecutor(ex.latency_model, ex.scheduler_config)
    return sim.run()


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[SimConfig, Workload]:
    page_size = draw(st.sampled_from([1, 4, 16]))
    n = draw(st.integers(5, 25))
    gap = st.one_of(st.just(0.0), st.floats(0.0, 0.1, allow_nan=False), st.sampled_from([0.01, 0.05]))
    gaps = draw(st.lists(gap, min_size=n, max_size=n))
    prompts = draw(st.lists(st.integers(1, 80), min_size=n, max_size=n))
    outputs = draw(st.lists(st.integers(1, 90), min_size=n, max_size=n))
    pool_tokens = draw(st.integers(32, 600))
    config = SimConfig(
        page_size=page_size,
        num_pages=1 + pages_for(pool_tokens, page_size),
        allocator=draw(st.sampled_from(["free-list", "free-list-lifo"])),
        max_prefill_length=draw(st.integers(16, 80)),
        max_concurrent_prefill=draw(st.integers(1, 3)),
        max_concurrent_decodes=draw(st.integers(1, 12)),
        max_num_batched_tokens=draw(st.one_of(st.none(), st.integers(8, 160))),
        check_invariants=True,
    )
    return config, Workload(np.cumsum(gaps), np.array(prompts), np.array(outputs))


# --- determinism and fast-forward ----------------------------------------------------------------


def test_same_config_and_workload_give_identical_frames() -> None:
    wl = poisson_workload(rate=40.0, num_requests=60, prompt_len=Uniform(1, 200), output_len=Uniform(1, 100), seed=3)
    config = SimConfig(page_size=4, num_pages=120, max_prefill_length=256, max_concurrent_decodes=12)
    a, b = simulate(config, wl), simulate(config, wl)
    assert a.requests["num_preemptions"].sum() > 0  # an interesting run, not a trivial one
    pd.testing.assert_frame_equal(a.requests, b.requests)
    pd.testing.assert_frame_equal(a.steps, b.steps)
    pd.testing.assert_series_equal(a.summary, b.summary)


def compare_runs(ff: SimResult, step: SimResult) -> None:
    a = ff.requests.set_index("request_id").sort_index()
    b = step.requests.set_index("request_id").sort_index()
    assert list(a.index) == list(b.index)
    for col in ("status", "finish_reason", "num_output_tokens", "num_preemptions"):
        assert a[col].tolist() == b[col].tolist(), col
    for col in ("first_scheduled_time", "first_token_time", "finish_time"):
        x, y = a[col].to_numpy(dtype=float), b[col].to_numpy(dtype=float)
        np.testing.assert_allclose(x, y, rtol=1e-9, atol=0, equal_nan=True, err_msg=col)
    assert (step.steps["num_steps"] == 1).all()
    assert ff.steps["num_steps"].sum() == len(step.steps), "fast-forward skipped or added steps"
    assert ff.steps["num_preempted"].sum() == step.steps["num_preempted"].sum()
    assert ff.steps["num_finished"].sum() == step.steps["num_finished"].sum()
    assert ff.free_pages_at_end == step.free_pages_at_end == ff.num_pages - 1
    for key in ("pages_used_max", "pages_used", "used_slots", "allocated_slots"):
        # a fast-forwarded row's duration-weighted pool use equals that of the steps it replaced
        assert (ff.steps[key] * ff.steps["duration"]).sum() == pytest.approx(
            (step.steps[key] * step.steps["duration"]).sum(), rel=1e-9
        ) or key == "pages_used_max", key
    if len(step.steps):
        assert ff.steps["pages_used_max"].max() == step.steps["pages_used_max"].max()


@PROPERTY
@given(scenarios())
def test_fast_forward_matches_stepping_one_at_a_time(scenario: tuple[SimConfig, Workload]) -> None:
    config, workload = scenario
    compare_runs(run_sim(config, workload), run_sim(config, workload, fast_forward=False))


@PROPERTY
@given(scenarios())
def test_lean_runs_go_past_finishes_and_match_stepping(scenario: tuple[SimConfig, Workload]) -> None:
    # Without step rows a decode run continues past finishes while nothing waits: fewer engine calls,
    # the same request outcomes and times as stepping one at a time.
    config, workload = scenario
    lean, step = run_sim(replace(config, record_steps=False), workload), run_sim(config, workload, fast_forward=False)
    a = lean.requests.set_index("request_id").sort_index()
    b = step.requests.set_index("request_id").sort_index()
    for col in ("status", "finish_reason", "num_output_tokens", "num_preemptions"):
        assert a[col].tolist() == b[col].tolist(), col
    for col in ("first_scheduled_time", "first_token_time", "finish_time"):
        np.testing.assert_allclose(a[col].to_numpy(float), b[col].to_numpy(float), rtol=1e-9, equal_nan=True,
                                   err_msg=col)  # fmt: skip
    assert lean.free_pages_at_end == step.free_pages_at_end


def test_lean_run_continues_past_a_finish_only_while_nothing_waits() -> None:
    # Three decoders finishing at different times, no arrivals: one prefill step for all three, then a
    # single fast-forwarded engine call runs them all to completion across the finishes.
    wl = Workload(np.zeros(3), np.array([10, 20, 30]), np.array([50, 80, 120]))
    config = SimConfig(page_size=16, num_pages=200, max_prefill_length=256, record_steps=False)
    calls: list[tuple[int, int] | None] = []

    class CountingEngine(Engine):
        def step(self, now: float, horizon: float = math.inf) -> StepOutcome | None:
            out = super().step(now, horizon)
            calls.append(None if out is None else (out.num_steps, len(out.finished)))
            return out

    def counted(config: SimConfig) -> Simulator:
        sim = Simulator(config, wl)
        old = sim.engine
        sim.engine = CountingEngine(old.scheduler, old.executor, metrics=old.metrics)
        return sim

    counted(config).run()
    assert calls == [(1, 0), (119, 3)], calls
    # With a request waiting for room (max_concurrent_decodes=2), the first finish ends the run.
    calls.clear()
    counted(replace(config, max_concurrent_decodes=2)).run()
    assert (49, 1) in calls, calls


@settings(max_examples=40, deadline=None)
@given(
    kv=st.lists(st.integers(1, 5000), min_size=1, max_size=12),
    data=st.data(),
)
def test_executor_chain_durations_default_equals_the_vectorized_one(kv: list[int], data: st.DataObject) -> None:
    # A decode run whose batch shrinks as requests finish: the Executor default (one decode_run_durations call
    # per stretch of constant membership) and SimExecutor's vectorized override give the same step times.
    steps = data.draw(st.lists(st.integers(1, 60), min_size=len(kv), max_size=len(kv)))
    config = SimConfig()
    ex = build_engine(config).executor
    params = SamplingParams(max_tokens=100)
    batch = [SeqChunk(Request(f"r{i}", n, params), n - 1, 1, [], True) for i, n in enumerate(kv)]
    fast = ex.decode_chain_durations(batch, steps, math.inf)
    default = Executor.decode_chain_durations(ex, batch, steps, math.inf)
    assert len(fast) == max(steps)
    np.testing.assert_allclose(fast, default, rtol=1e-12)
    # The default may stop at the horizon: what it returns is a prefix reaching the horizon.
    horizon = float(fast[: max(steps) // 2 + 1].sum())
    cut = Executor.decode_chain_durations(ex, batch, steps, horizon)
    assert cut.sum() >= horizon * (1 - 1e-12)
    np.testing.assert_allclose(cut, fast[: len(cut)], rtol=1e-12)


@settings(max_examples=80, deadline=None)
@given(
    kv=st.lists(st.integers(1, 5000), min_size=1, max_size=12),
    data=st.data(),
)
def test_short_chains_timed_step_by_step_equal_the_array_path(kv: list[int], data: st.DataObject) -> None:
    # SimExecutor.decode_chain_until (plain floats, for runs of up to SHORT_CHAIN_STEPS) must give the same step
    # end times, bit for bit, and the same number of steps before the horizon as the array path; it declines
    # (None) only when the run goes past SHORT_CHAIN_STEPS before reaching the horizon.
    steps = data.draw(st.lists(st.integers(1, 2 * SHORT_CHAIN_STEPS), min_size=len(kv), max_size=len(kv)))
    ex = build_engine(SimConfig()).executor
    params = SamplingParams(max_tokens=1000)
    batch = [SeqChunk(Request(f"r{i}", n, params), n - 1, 1, [], True) for i, n in enumerate(kv)]
    durations = ex.decode_chain_durations(batch, steps, math.inf)
    starts = np.cumsum(durations) - durations
    horizon = data.draw(st.one_of(st.just(math.inf), st.just(0.0), st.sampled_from(starts.tolist()),
                                  st.floats(0.0, float(durations.sum()) * 1.2)))  # fmt: skip
    array_ends, array_count = steps_before(durations, horizon)
    short = ex.decode_chain_until(batch, steps, horizon)
    if short is None:
        assert array_count > SHORT_CHAIN_STEPS
        return
    ends, count = short
    assert count == array_count
    assert len(ends) >= count
    np.testing.assert_array_equal(np.asarray(ends), array_ends[: len(ends)])


def test_fast_forward_stops_at_the_next_arrival() -> None:
    # A long steady decode run, then an arrival in its middle: the run must split there, and the
    # newcomer must be scheduled exactly when it would be stepping one at a time.
    wl = Workload(np.array([0.0, 0.0, 0.3]), np.array([100, 120, 50]), np.array([400, 300, 20]))
    config = SimConfig(page_size=16, num_pages=200, max_prefill_length=256, check_invariants=True)
    ff, step = run_sim(config, wl), run_sim(config, wl, fast_forward=False)
    compare_runs(ff, step)
    assert (ff.steps["num_steps"] > 50).any(), "expected a long fast-forwarded run"
    assert len(ff.steps) < len(step.steps) // 10
    newcomer = ff.requests.set_index("request_id").loc["r2"]
    starts = ff.steps["time"].to_numpy()
    assert newcomer["first_scheduled_time"] in starts
    # The step that schedules r2 is the first that starts at or after its arrival.
    assert newcomer["first_scheduled_time"] == starts[np.searchsorted(starts, 0.3)]
    # The decode run before the arrival is one fast-forwarded row that reaches the arrival.
    last = ff.steps[ff.steps["time"] < 0.3].iloc[-1]
    assert last["num_steps"] > 50 and last["time"] + last["duration"] >= 0.3


def test_fast_forward_page_metrics_match_stepping() -> None:
    wl = Workload(np.array([0.0, 0.0]), np.array([100, 120]), np.array([200, 400]))
    config = SimConfig(page_size=16, num_pages=200, max_prefill_length=256)
    ff, step = run_sim(config, wl), run_sim(config, wl, fast_forward=False)
    for key in ("peak_pages_used", "mean_page_utilization", "mean_fragmentation"):
        assert ff.summary[key] == pytest.approx(step.summary[key], rel=1e-6), key


def test_fast_forward_stops_where_pages_run_out() -> None:
    # Two decoders that fit together for a while, then the newer one must be preempted.
    wl = Workload(np.array([0.0, 0.0]), np.array([10, 10]), np.array([200, 200]))
    config = SimConfig(page_size=4, num_pages=1 + 80, max_prefill_length=64, check_invariants=True)
    ff, step = run_sim(config, wl), run_sim(config, wl, fast_forward=False)
    compare_runs(ff, step)
    assert ff.requests["num_preemptions"].sum() >= 1
    assert (ff.steps["num_steps"] > 1).any()


# --- a token-producing executor (the real engine's path) ----------------------------------------------


class TokenExecutor(Executor):
    """Samples token ``10 + number of outputs so far``; checks the engine's SeqChunk contract."""

    def __init__(self, page_size: int, duration: float = 1.0) -> None:
        self.page_size = page_size
        self.duration = duration
        self.calls: list[list[tuple[str, int, int, bool]]] = []

    def execute(self, batch: list[SeqChunk]) -> ExecuteResult:
        assert batch, "executed an empty batch"
        assert len({c.request_id for c in batch}) == len(batch)
        sampled = {}
        for c in batch:
            r = c.request
            assert c.start == r.num_computed_tokens
            assert 1 <= c.num_tokens and c.kv_len <= r.num_tokens
            assert len(c.page_table) * self.page_size >= c.kv_len, "computing into unallocated slots"
            assert 0 not in c.page_table
            assert c.sample == (c.kv_len == r.num_tokens)
            if c.sample:
                sampled[c.request_id] = 10 + r.num_output_tokens
        self.calls.append([(c.request_id, c.start, c.num_tokens, c.sample) for c in batch])
        return ExecuteResult(self.duration, sampled)


def token_engine(
    num_pages: int = 64, page_size: int = 1, eos: tuple[int, ...] = (), check: bool = True, **limits: int
) -> tuple[Engine, TokenExecutor]:
    limits.setdefault("max_prefill_length", 32)
    cfg = SchedulerConfig(**limits)  # type: ignore[arg-type]
    alloc = make_allocator("free-list", num_pages=num_pages, page_size=page_size)
    ex = TokenExecutor(page_size)
    return Engine(make_scheduler("fcfs", cfg, alloc), ex, eos_token_ids=eos, check_invariants=check), ex


def drain(engine: Engine, t: float = 0.0, max_steps: int = 10_000) -> float:
    for _ in range(max_steps):
        if not engine.has_unfinished:
            return t
        out = engine.step(t)
        assert out is not None, "requests remain but nothing was scheduled"
        t = out.end
    raise AssertionError("engine did not drain")


def req(rid: str, prompt: int, max_tokens: int = 4, **params: object) -> Request:
    return Request(rid, prompt, SamplingParams(max_tokens=max_tokens, **params))  # type: ignore[arg-type]


def test_stop_token_finishes_with_stop() -> None:
    eng, _ = token_engine()
    r = req("a", 3, max_tokens=10, stop_token_ids=(12,))
    eng.add_request(r)
    drain(eng)
    assert r.output_token_ids == [10, 11, 12]
    assert r.num_output_tokens == 3
    assert r.status is RequestStatus.FINISHED and r.finish_reason is FinishReason.STOP


def test_engine_eos_finishes_unless_ignored() -> None:
    eng, _ = token_engine(eos=(11,))
    a = req("a", 3, max_tokens=6)
    b = req("b", 3, max_tokens=6, ignore_eos=True)
    eng.add_request(a)
    eng.add_request(b)
    drain(eng)
    assert a.output_token_ids == [10, 11] and a.finish_reason is FinishReason.STOP
    assert b.output_token_ids == [10, 11, 12, 13, 14, 15] and b.finish_reason is FinishReason.LENGTH


def test_stop_checker_ends_a_request() -> None:
    cfg = SchedulerConfig(max_prefill_length=8)
    alloc = make_allocator("free-list", num_pages=32, page_size=1)
    eng = Engine(
        make_scheduler("fcfs", cfg, alloc), TokenExecutor(1), stop_checker=lambda r: r.output_token_ids[-1] == 13
    )
    r = req("a", 2, max_tokens=10)
    eng.add_request(r)
    drain(eng)
    assert r.output_token_ids == [10, 11, 12, 13] and r.finish_reason is FinishReason.STOP


def test_first_token_time_is_end_of_prefill_step() -> None:
    eng, _ = token_engine()
    r = req("a", 5, max_tokens=3)
    eng.add_request(r, now=2.0)
    assert r.arrival_time == 2.0
    out = eng.step(2.0)
    assert out is not None and out.new_token_ids == {"a": 10}
    assert r.first_scheduled_time == 2.0 and r.first_token_time == 3.0
    drain(eng, 3.0)
    assert r.finish_time == 5.0  # two more one-second decode steps


@PROPERTY
@given(
    prompts=st.lists(st.integers(1, 24), min_size=2, max_size=12),
    outputs=st.lists(st.integers(1, 20), min_size=12, max_size=12),
    pool=st.integers(44, 90),
    page_size=st.sampled_from([1, 2, 4]),
    budget=st.integers(4, 64),
)
def test_token_path_honours_executor_contract_under_preemption(
    prompts: list[int], outputs: list[int], pool: int, page_size: int, budget: int
) -> None:
    eng, ex = token_engine(
        num_pages=1 + pool // page_size, page_size=page_size, max_prefill_length=24, max_num_batched_tokens=budget
    )
    pairs = zip(prompts, outputs[: len(prompts)], strict=True)
    reqs = [req(f"r{i}", p, max_tokens=o, ignore_eos=True) for i, (p, o) in enumerate(pairs)]
    for r in reqs:
        eng.add_request(r)
    drain(eng)
    for r in reqs:
        if r.finish_reason is FinishReason.REJECTED:
            assert pages_for(r.num_prompt_tokens + r.sampling_params.max_tokens, page_size) > pool // page_size
            continue
        # Tokens survive recompute preemption: exactly 10, 11, ... in order.
        assert r.output_token_ids == list(range(10, 10 + r.sampling_params.max_tokens))
        assert r.num_computed_tokens == r.num_tokens - 1
    assert eng.allocator.num_free_pages == eng.allocator.num_usable_pages


# --- abort and admission ----------------------------------------------------------------------------


def test_abort_waiting_request_leaves_the_others_alone() -> None:
    eng, _ = token_engine(max_concurrent_decodes=1)
    a, b = req("a", 4, max_tokens=3), req("b", 4, max_tokens=3)
    eng.add_request(a)
    eng.add_request(b)
    out = eng.step(0.0)
    assert out is not None and b in eng.scheduler.waiting and "a" in eng.scheduler.running
    pages_a = list(eng.allocator.page_table("a"))
    free_before = eng.allocator.num_free_pages
    assert eng.abort("b", now=0.5, message="client went away")
    assert b.status is RequestStatus.ABORTED and b.finish_reason is FinishReason.ABORTED
    assert b.finish_time == 0.5 and b.status_message == "client went away"
    assert b not in eng.scheduler.waiting and "b" not in eng.requests
    assert eng.allocator.page_table("a") == pages_a and eng.allocator.num_free_pages == free_before
    drain(eng, out.end)
    assert a.status is RequestStatus.FINISHED and a.output_token_ids == [10, 11, 12]
    df = eng.metrics.requests_frame().set_index("request_id")
    assert df.loc["b", "finish_reason"] == "aborted" and df.loc["b", "message"] == "client went away"


def test_abort_running_request_frees_its_pages() -> None:
    eng, _ = token_engine(num_pages=33, page_size=4)
    a, b = req("a", 9, max_tokens=8), req("b", 6, max_tokens=8)
    eng.add_request(a)
    eng.add_request(b)
    t = 0.0
    for _ in range(4):
        out = eng.step(t)
        assert out is not None
        t = out.end
    assert a.status is RequestStatus.RUNNING and b.status is RequestStatus.RUNNING
    held = len(eng.allocator.page_table("a"))
    assert held > 0
    free_before = eng.allocator.num_free_pages
    pages_b = list(eng.allocator.page_table("b"))
    assert eng.abort("a", now=t)
    assert eng.allocator.page_table("a") == [] and "a" not in eng.allocator.owners()
    assert eng.allocator.num_free_pages == free_before + held
    assert eng.allocator.page_table("b") == pages_b
    assert "a" not in eng.scheduler.running and a.status is RequestStatus.ABORTED
    eng.allocator.check_invariants()
    assert not eng.abort("a", now=t), "aborting twice"
    assert not eng.abort("nobody", now=t)
    drain(eng, t)
    assert b.output_token_ids == list(range(10, 18)) and b.finish_reason is FinishReason.LENGTH
    assert eng.allocator.num_free_pages == eng.allocator.num_usable_pages


def test_duplicate_request_id_raises_and_keeps_the_original() -> None:
    eng, _ = token_engine()
    original = req("a", 4, max_tokens=3)
    eng.add_request(original, now=1.0)
    out = eng.step(1.0)
    assert out is not None
    state = (original.status, original.num_computed_tokens, list(original.output_token_ids), original.arrival_time)
    pages = list(eng.allocator.page_table("a"))
    impostor = req("a", 7, max_tokens=9)
    with pytest.raises(ValueError, match="'a' is already in flight"):
        eng.add_request(impostor, now=5.0)
    assert impostor.arrival_time == 0.0, "the rejected duplicate was modified"
    assert eng.requests["a"] is original
    assert (
        original.status,
        original.num_computed_tokens,
        list(original.output_token_ids),
        original.arrival_time,
    ) == state
    assert eng.allocator.page_table("a") == pages
    assert eng.scheduler.num_unfinished == 1
    drain(eng, out.end)
    assert original.output_token_ids == [10, 11, 12]
    # Once done, the id may be reused.
    assert eng.add_request(req("a", 2, max_tokens=1))


def test_unservable_requests_are_rejected_with_a_reason() -> None:
    eng, _ = token_engine(num_pages=11, page_size=2, max_prefill_length=16)  # 10 pages = 20 slots
    too_long = req("long", 17, max_tokens=1)
    too_big = req("big", 16, max_tokens=5)  # 21 tokens: 11 pages
    fits = req("fits", 16, max_tokens=4)  # 20 tokens: 10 pages
    assert not eng.add_request(too_long, now=1.0)
    assert not eng.add_request(too_big, now=2.0)
    assert eng.add_request(fits, now=3.0)
    for r, what in ((too_long, "max_prefill_length=16"), (too_big, "need 11 pages")):
        assert r.status is RequestStatus.ABORTED and r.finish_reason is FinishReason.REJECTED
        assert what in r.status_message
        assert r.finish_time == r.arrival_time
    assert set(eng.requests) == {"fits"}
    drain(eng, 3.0)
    assert fits.finish_reason is FinishReason.LENGTH


def test_max_model_len_caps_prompt_plus_output() -> None:
    eng, _ = token_engine(num_pages=200, max_prefill_length=16, max_model_len=20)
    over = req("over", 16, max_tokens=5)
    edge = req("edge", 16, max_tokens=4)
    assert not eng.add_request(over)
    assert over.finish_reason is FinishReason.REJECTED and "max_model_len=20" in over.status_message
    assert eng.add_request(edge)
    drain(eng)
    assert edge.finish_reason is FinishReason.LENGTH and edge.num_output_tokens == 4


def test_empty_prompt_is_rejected() -> None:
    eng, _ = token_engine()
    r = req("empty", 0)
    assert not eng.add_request(r)
    assert r.finish_reason is FinishReason.REJECTED and "empty prompt" in r.status_message


def test_step_with_nothing_to_do_returns_none() -> None:
    eng, ex = token_engine()
    assert eng.step(0.0) is None
    assert ex.calls == []


# --- user-defined schedulers that break the rules -----------------------------------------------------


class OverBudgetScheduler(Scheduler):
    """Admits every waiting request whole, ignoring the token budget (allocating properly)."""

    def schedule(self) -> StepPlan:
        plan = StepPlan()
        while self.waiting:
            r = self.waiting[0]
            assert self.allocator.allocate(r.request_id, r.num_tokens)
            self.admit(r)
            plan.num_scheduled_tokens[r.request_id] = r.num_tokens_to_compute
        for rid, r in self.running.items():
            if rid not in plan.num_scheduled_tokens and not r.is_prefill:
                assert self.allocator.allocate(rid, r.num_tokens)
                plan.num_scheduled_tokens[rid] = 1
        return plan


class NoAllocScheduler(FCFSScheduler):
    """Schedules like FCFS but never allocates a page."""

    def schedule(self) -> StepPlan:
        plan = StepPlan()
        if self.waiting:
            r = self.waiting[0]
            self.admit(r)
            plan.num_scheduled_tokens[r.request_id] = r.num_tokens_to_compute
        return plan


class IdleScheduler(FCFSScheduler):
    """Never schedules anything."""

    def schedule(self) -> StepPlan:
        return StepPlan()


def custom_engine(cls: type[Scheduler], check: bool = True, **limits: int) -> Engine:
    cfg = SchedulerConfig(**limits)  # type: ignore[arg-type]
    alloc = make_allocator("free-list", num_pages=64, page_size=4)
    return Engine(cls(cfg, alloc), TokenExecutor(4), check_invariants=check)


def test_over_budget_scheduler_is_caught() -> None:
    eng = custom_engine(OverBudgetScheduler, max_prefill_length=16, max_num_batched_tokens=10)
    eng.add_request(req("a", 6))
    eng.add_request(req("b", 6))
    with pytest.raises(InvariantViolation, match="token-budget") as info:
        eng.step(0.0)
    assert info.value.invariant == "token-budget"
    assert "12 tokens > budget 10" in str(info.value)


def test_scheduler_that_does_not_allocate_is_caught() -> None:
    eng = custom_engine(NoAllocScheduler, max_prefill_length=16)
    eng.add_request(req("a", 6))
    with pytest.raises(InvariantViolation) as info:
        eng.step(0.0)
    assert info.value.invariant == "pages-allocated"
    assert "pages-allocated" in str(info.value) and "request a" in str(info.value)


def test_checks_are_opt_in() -> None:
    # The same broken policy runs unchecked when check_invariants is off (checks cost time).
    eng = custom_engine(OverBudgetScheduler, check=False, max_prefill_length=16, max_num_batched_tokens=10)
    eng.add_request(req("a", 6))
    eng.add_request(req("b", 6))
    out = eng.step(0.0)
    assert out is not None and out.plan.total_tokens == 12


def test_scheduler_that_never_schedules_trips_progress_check() -> None:
    eng = custom_engine(IdleScheduler, check=False, max_prefill_length=16)
    eng.add_request(req("a", 6))
    with pytest.raises(InvariantViolation) as info:
        eng.step(0.0)
    assert info.value.invariant == "progress" and "request a waits" in str(info.value)


def test_simulator_surfaces_invariant_violation_unchanged() -> None:
    # Regression: simpy re-creates a failed process's exception from its args, which turned every
    # InvariantViolation raised inside the simulator into a TypeError about a missing argument.
    wl = Workload(np.array([0.0]), np.array([6]), np.array([3]))
    sim = Simulator(SimConfig(page_size=4, num_pages=64, max_prefill_length=16, check_invariants=True), wl)
    old = sim.engine.scheduler
    sim.engine.scheduler = NoAllocScheduler(old.config, old.allocator)
    with pytest.raises(InvariantViolation) as info:
        sim.run()
    assert info.value.invariant == "pages-allocated"
