"""A step that raises fails only the requests that caused it; the engine goes on, other requests' outputs are
unchanged, pages are freed, and only a run of steps that fail everything stops the engine."""

from __future__ import annotations

import time

import pytest
from server_fixtures import all_pages_free, broken_surge, make_surge

from odrive.allocators import make_allocator
from odrive.core.engine import Engine
from odrive.core.executor import ExecuteResult, Executor, SeqChunk
from odrive.core.request import FinishReason, Request, RequestStatus
from odrive.core.sampling_params import SamplingParams
from odrive.schedulers import SchedulerConfig, make_scheduler
from odrive.vsurge import EngineFailure

POISON_SEED = 666


class CountingExecutor(Executor):
    """Samples token 7 for every sampling sequence; raises whenever a batch holds a request id in ``poison``."""

    def __init__(self, poison: set[str]) -> None:
        self.poison = poison
        self.batch_sizes: list[int] = []

    def execute(self, batch: list[SeqChunk]) -> ExecuteResult:
        self.batch_sizes.append(len(batch))
        bad = [c.request_id for c in batch if c.request_id in self.poison]
        if bad:
            raise OverflowError(f"cannot convert {bad[0]} to int32")
        return ExecuteResult(0.001, {c.request_id: 7 for c in batch if c.sample})


def make_engine(executor: Executor, *, num_pages: int = 64) -> Engine:
    allocator = make_allocator("free-list", num_pages=num_pages, page_size=4)
    config = SchedulerConfig(max_prefill_length=64, max_concurrent_prefill=8, max_concurrent_decodes=8)
    return Engine(make_scheduler("fcfs", config, allocator), executor)


def test_only_the_request_whose_execution_raises_fails_and_the_rest_finish():
    executor = CountingExecutor(poison={"r3"})
    engine = make_engine(executor)
    requests = [Request.from_tokens(f"r{i}", [1] * (5 + i), SamplingParams(max_tokens=6)) for i in range(8)]
    for r in requests:
        engine.add_request(r, now=0.0)
    failed, now = [], 0.0
    while engine.has_unfinished:
        outcome = engine.step(now)
        assert outcome is not None
        failed += outcome.failed
        now = outcome.end
    assert failed == [requests[3]]
    bad = requests[3]
    assert bad.status is RequestStatus.ABORTED and bad.finish_reason is FinishReason.ERROR
    assert "OverflowError: cannot convert r3 to int32" in bad.status_message
    for r in requests[:3] + requests[4:]:
        assert r.status is RequestStatus.FINISHED and r.output_token_ids == [7] * 6
    assert engine.allocator.num_free_pages == engine.allocator.num_usable_pages
    # the first step (7 prefills) failed, then halves ran until r3 was alone: r0-r2 ok, r3-r6 failed, r3-r4 failed,
    # r3 failed, r4 ok, r5-r6 ok; every other request ran at most three times in that step
    assert executor.batch_sizes[:7] == [7, 3, 4, 2, 1, 1, 2]


def test_a_batch_of_only_failing_requests_fails_them_all_and_frees_their_pages():
    executor = CountingExecutor(poison={"a", "b"})
    engine = make_engine(executor)
    for rid in ("a", "b"):
        engine.add_request(Request.from_tokens(rid, [1, 2, 3], SamplingParams(max_tokens=3)), now=0.0)
    outcome = engine.step(0.0)
    assert outcome is not None and {r.request_id for r in outcome.failed} == {"a", "b"}
    assert not engine.has_unfinished and engine.allocator.num_free_pages == engine.allocator.num_usable_pages
    assert len(engine.metrics.requests_frame()) == 2


# --- the real engine ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def surge(tiny_checkpoint):
    s = make_surge(tiny_checkpoint, "faults")  # the server tests' engine: its step shapes are compiled once
    yield s
    s.stop()


PROMPTS = ["The engine keeps a pool", "Children walked to school", "The old library had", "Numbers such as 1, 2"]
GREEDY = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)


@pytest.fixture
def poisoned(surge, monkeypatch):
    """The executor raises for any batch holding a request seeded ``POISON_SEED`` (as a bug in a kernel for one
    request's parameters would)."""
    execute = surge.executor.execute

    def execute_or_raise(batch):
        if any(c.request.sampling_params.seed == POISON_SEED for c in batch):
            raise OverflowError("Python int too large to convert to C int")
        return execute(batch)

    monkeypatch.setattr(surge.executor, "execute", execute_or_raise)
    return surge


def test_a_poisoned_request_fails_alone_and_others_equal_their_quiet_outputs(surge, poisoned):
    quiet = [r.token_ids for r in surge.generate(PROMPTS, GREEDY)]
    poison = SamplingParams(max_tokens=8, temperature=0.7, seed=POISON_SEED)
    handles = [surge.submit(p, GREEDY) for p in PROMPTS[:2]]
    bad = surge.submit("The engine keeps", poison)
    handles += [surge.submit(p, GREEDY) for p in PROMPTS[2:]]
    while not all(h.done for h in [*handles, bad]):
        assert surge.step() is not None
    assert [h.result().token_ids for h in handles] == quiet
    with pytest.raises(RuntimeError, match="request faults-.* failed") as info:
        bad.result()
    assert "OverflowError" in str(info.value.__cause__)
    deltas = []
    bad.subscribe(deltas.append)
    assert deltas[-1].finished and deltas[-1].finish_reason == "error" and "OverflowError" in deltas[-1].error
    assert all_pages_free(surge)
    assert [r.token_ids for r in surge.generate(PROMPTS, GREEDY)] == quiet  # and the engine goes on


def test_the_background_thread_survives_a_poisoned_request(surge, poisoned):
    quiet = surge.generate(PROMPTS[0], GREEDY)[0].token_ids
    surge.start()
    try:
        bad = surge.submit(PROMPTS[1], SamplingParams(max_tokens=4, temperature=0.5, seed=POISON_SEED))
        assert bad.wait(30) and bad._error is not None
        assert surge.is_running and not surge.failed
        assert surge.generate(PROMPTS[0], GREEDY)[0].token_ids == quiet
    finally:
        surge.stop()
    assert all_pages_free(surge)


def test_an_error_outside_the_executor_fails_that_steps_requests_only(surge, monkeypatch):
    scheduler = surge.engine.scheduler
    schedule = scheduler.schedule
    calls = {"n": 0}

    def schedule_then_raise_once():
        plan = schedule()
        calls["n"] += 1
        if calls["n"] == 2:  # the second step: the decode of the first request
            raise RuntimeError("scheduler bug")
        return plan

    first = surge.submit(PROMPTS[0], GREEDY)
    assert surge.step() is not None  # its prefill
    monkeypatch.setattr(scheduler, "schedule", schedule_then_raise_once)
    calls["n"] = 1
    outcome = surge.step()
    assert outcome is not None and [r.request_id for r in outcome.failed] == [first.request_id]
    assert first.done and first.request.finish_reason is FinishReason.ERROR
    assert "RuntimeError: scheduler bug" in first.request.status_message
    assert all_pages_free(surge)
    assert len(surge.generate(PROMPTS[1], GREEDY)[0].token_ids) == 8


def test_a_request_whose_output_cannot_be_decoded_fails_alone(surge, monkeypatch):
    want = [r.token_ids for r in surge.generate(PROMPTS[:2], GREEDY)]
    first = surge.submit(PROMPTS[0], GREEDY)
    other = surge.submit(PROMPTS[1], GREEDY)
    push = type(first).push

    def push_or_raise(handle, token):
        if handle is first and handle.request.num_output_tokens == 3:
            raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")
        return push(handle, token)

    monkeypatch.setattr(type(first), "push", push_or_raise)
    while not (first.done and other.done):
        surge.step()
    assert first.request.finish_reason is FinishReason.ERROR and "decoding the output failed" in str(first._error)
    assert other.result().token_ids == want[1]
    assert all_pages_free(surge)


def test_a_broken_device_stops_the_engine_thread_after_consecutive_failed_steps(tiny_checkpoint):
    broken = broken_surge(tiny_checkpoint, max_failed_steps=3)
    broken.start()
    try:
        for _ in range(3):
            handle = broken.submit("hi", SamplingParams(max_tokens=2))
            assert handle.wait(30) and handle._error is not None
        deadline = time.monotonic() + 10
        while broken.is_running and time.monotonic() < deadline:
            time.sleep(0.01)
        assert broken.failed and isinstance(broken.error, EngineFailure) and not broken.is_running
        assert "device lost" in str(broken.error)
        with pytest.raises(RuntimeError, match="engine has failed"):
            broken.submit("hi", SamplingParams(max_tokens=2))
    finally:
        broken.stop()
