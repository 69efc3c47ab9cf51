"""Every invariant the engine checks, triggered by a deliberately broken plan or state, names itself."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from odrive.allocators import FreeListAllocator, PageAllocator, make_allocator
from odrive.core.engine import Engine
from odrive.core.invariants import check_plan
from odrive.core.request import Request
from odrive.core.sampling_params import SamplingParams
from odrive.errors import InvariantViolation
from odrive.schedulers import FCFSScheduler, SchedulerConfig, StepPlan
from sim.executor import SimExecutor
from sim.latency import get_latency_model


def make(num_pages: int = 32, page_size: int = 4, **limits: int) -> FCFSScheduler:
    limits.setdefault("max_prefill_length", 64)
    return FCFSScheduler(SchedulerConfig(**limits), make_allocator("free-list", num_pages, page_size))  # type: ignore[arg-type]


def new_request(rid: str, prompt: int, outputs: int = 0, computed: int = 0) -> Request:
    r = Request(rid, prompt, SamplingParams(max_tokens=32))
    r.num_output_tokens = outputs
    r.num_computed_tokens = computed
    return r


def run(sched: FCFSScheduler, rid: str, prompt: int, outputs: int = 0, computed: int = 0,
        allocate: int | None = None) -> Request:  # fmt: skip
    """Put a request in the running set holding pages for ``allocate`` tokens (default: all of them)."""
    r = new_request(rid, prompt, outputs, computed)
    sched.add_request(r)
    sched.admit(r)
    assert sched.allocator.allocate(rid, r.num_tokens if allocate is None else allocate)
    return r


def expect(name: str, sched: FCFSScheduler, plan: StepPlan) -> None:
    with pytest.raises(InvariantViolation) as info:
        check_plan(sched, plan)
    assert info.value.invariant == name
    assert f"invariant {name!r} violated" in str(info.value)
    assert info.value.detail and info.value.detail in str(info.value)


def plan_of(tokens: dict[str, int] | None = None, preempted: list[str] | None = None) -> StepPlan:
    return StepPlan(num_scheduled_tokens=dict(tokens or {}), preempted=list(preempted or []))


# --- check_plan ---------------------------------------------------------------------------------------


def test_valid_plans_pass() -> None:
    sched = make()
    run(sched, "a", 8)
    run(sched, "b", 4, outputs=3, computed=6)  # decoding: 7 tokens, 6 cached
    check_plan(sched, plan_of({"a": 8}))
    check_plan(sched, plan_of({"b": 1}))
    sched.add_request(new_request("w", 5))
    check_plan(sched, plan_of({"a": 8, "b": 1}))  # token budget 256, 1 prefill
    # And the FCFS scheduler's own plans pass on a fresh state.
    fresh = make()
    fresh.add_request(new_request("x", 10))
    check_plan(fresh, fresh.schedule())


def test_token_budget() -> None:
    sched = make(max_num_batched_tokens=8)
    run(sched, "a", 10)
    expect("token-budget", sched, plan_of({"a": 10}))


def test_max_concurrent_decodes() -> None:
    sched = make(max_concurrent_decodes=1)
    run(sched, "a", 4)
    run(sched, "b", 4)
    expect("max-concurrent-decodes", sched, plan_of({"a": 4}))


def test_scheduled_is_running() -> None:
    sched = make()
    sched.add_request(new_request("w", 4))  # waiting, not admitted
    expect("scheduled-is-running", sched, plan_of({"w": 4}))
    expect("scheduled-is-running", sched, plan_of({"ghost": 1}))


@pytest.mark.parametrize("n", [0, -1, 5])
def test_tokens_in_range(n: int) -> None:
    sched = make()
    run(sched, "a", 4)
    expect("tokens-in-range", sched, plan_of({"a": n}))


def test_tokens_in_range_for_a_decode() -> None:
    sched = make()
    run(sched, "a", 4, outputs=2, computed=5)  # 6 tokens, 1 to compute
    expect("tokens-in-range", sched, plan_of({"a": 2}))


def test_max_prefill_length() -> None:
    # A recompute-preempted request (prompt + outputs > max_prefill_length) must be re-prefilled in chunks.
    sched = make(max_prefill_length=4)
    run(sched, "a", 4, outputs=3, computed=0)
    expect("max-prefill-length", sched, plan_of({"a": 7}))
    check_plan(sched, plan_of({"a": 4}))


def test_pages_allocated() -> None:
    sched = make()
    run(sched, "a", 8, allocate=4)
    expect("pages-allocated", sched, plan_of({"a": 8}))
    check_plan(sched, plan_of({"a": 4}))


def test_pages_allocated_for_a_decode() -> None:
    sched = make(page_size=4)
    run(sched, "a", 4, outputs=1, computed=4, allocate=4)  # the decode writes slot 5: needs a second page
    expect("pages-allocated", sched, plan_of({"a": 1}))


def test_released_behind_window() -> None:
    # a decode at position 12 with window 8 sees positions 5..12: pages 0 (0-3) may be released, page 1 (4-7) not
    sched = make(page_size=4, sliding_window=8)
    run(sched, "a", 12, outputs=1, computed=12)
    assert sched.allocator.release_before("a", 4) == 1
    check_plan(sched, plan_of({"a": 1}))
    assert sched.allocator.release_before("a", 8) == 1
    expect("released-behind-window", sched, plan_of({"a": 1}))
    unwindowed = make(page_size=4)  # no window: nothing may be released
    run(unwindowed, "b", 12, outputs=1, computed=12)
    unwindowed.allocator.release_before("b", 4)
    expect("released-behind-window", unwindowed, plan_of({"b": 1}))


def test_max_concurrent_prefill() -> None:
    sched = make(max_concurrent_prefill=1)
    run(sched, "a", 4)
    run(sched, "b", 4)
    expect("max-concurrent-prefill", sched, plan_of({"a": 4, "b": 4}))


def test_queued_once() -> None:
    sched = make()
    r = new_request("w", 4)
    sched.add_request(r)
    sched.waiting.append(r)
    expect("queued-once", sched, plan_of())


def test_waiting_or_running() -> None:
    sched = make()
    r = run(sched, "a", 4)
    sched.waiting.append(r)
    sched.allocator.free("a")
    expect("waiting-or-running", sched, plan_of())


def test_preempted_not_running() -> None:
    sched = make()
    run(sched, "a", 4)
    expect("preempted-not-running", sched, plan_of(preempted=["a"]))
    # Preempted and re-admitted within the same plan (the FCFS bug this check caught).
    other = make()
    r = run(other, "b", 4)
    other.preempt(r)
    assert other.allocator.allocate("b", 4)
    other.admit(r)
    expect("preempted-not-running", other, plan_of({"b": 4}, preempted=["b"]))


def test_preempted_pages_freed() -> None:
    sched = make()
    r = run(sched, "a", 4, outputs=2, computed=5)
    sched.preempt(r)
    assert sched.allocator.allocate("a", 4)  # a broken policy gives it pages back while it waits
    expect("preempted-pages-freed", sched, plan_of(preempted=["a"]))


def test_waiting_holds_no_pages() -> None:
    sched = make()
    sched.add_request(new_request("w", 4))
    assert sched.allocator.allocate("w", 4)
    expect("waiting-holds-no-pages", sched, plan_of())


def test_check_plan_runs_the_allocator_checks() -> None:
    sched = make()
    run(sched, "a", 4)
    alloc = sched.allocator
    assert isinstance(alloc, FreeListAllocator)
    alloc._free.pop()  # lose a page
    expect("no-page-leak", sched, plan_of({"a": 4}))


def swapping(num_pages: int = 32, page_size: int = 4) -> FCFSScheduler:
    return make(num_pages, page_size, preemption_mode="swap", swap_space_pages=16)  # type: ignore[arg-type]


def test_swap_out_is_preempted() -> None:
    sched = swapping()
    run(sched, "a", 4)
    expect("swap-out-is-preempted", sched, StepPlan(num_scheduled_tokens={"a": 4}, swap_out={"a": [1]}))


def test_swap_in_is_scheduled_and_its_pages() -> None:
    sched = swapping()
    r = run(sched, "a", 6, outputs=2, computed=7)
    plan = StepPlan()
    sched.preempt(r, plan)
    assert plan.swap_out == {"a": [1, 2]} and "a" in sched.swap_space
    plan = StepPlan()
    assert sched.allocate_for_admission(r, 1, plan) == 1
    sched.admit(r)
    assert plan.swap_in == {"a": sched.allocator.page_table("a")[:2]}
    expect("swap-in-is-scheduled", sched, plan)
    plan.num_scheduled_tokens["a"] = 1
    check_plan(sched, plan)
    plan.swap_in["a"] = plan.swap_in["a"][::-1]
    expect("swap-in-pages", sched, plan)


def test_swap_space() -> None:
    sched = swapping()
    sched.add_request(new_request("w", 4, computed=4))
    sched.swap_space.put("w", 17)
    expect("swap-space", sched, plan_of())


def test_swapped_is_waiting() -> None:
    # A broken policy re-admits a swapped-out request with plain pages: its K/V would never come back.
    sched = swapping()
    r = run(sched, "a", 6, outputs=2, computed=7)
    sched.preempt(r, StepPlan())
    assert sched.allocator.allocate("a", 8)
    sched.admit(r)
    expect("swapped-is-waiting", sched, plan_of({"a": 1}))


# --- allocator invariants -------------------------------------------------------------------------------


class StateAllocator(PageAllocator):
    """An allocator whose state is set directly, to break it on purpose."""

    def __init__(self, num_pages: int, page_size: int, tables: dict[str, list[int]], free: list[int],
                 tokens: dict[str, int] | None = None, released: dict[str, int] | None = None) -> None:  # fmt: skip
        super().__init__(num_pages, page_size)
        self.tables = tables
        self.free_ids = free
        self.tokens = tokens or {}
        self.released = released or {}

    def num_released(self, request_id: str) -> int:
        return self.released.get(request_id, 0)

    def allocate(self, request_id: str, num_tokens: int) -> bool:
        raise NotImplementedError

    def free(self, request_id: str) -> None:
        raise NotImplementedError

    def page_table(self, request_id: str) -> list[int]:
        return self.tables.get(request_id, [])

    @property
    def num_free_pages(self) -> int:
        return len(self.free_ids)

    def num_tokens(self, request_id: str) -> int:
        return self.tokens.get(request_id, 0)

    def owners(self) -> dict[str, list[int]]:
        return dict(self.tables)

    def free_page_ids(self) -> list[int]:
        return list(self.free_ids)


ALLOCATOR_CASES: list[tuple[str, Callable[[], StateAllocator]]] = [
    ("null-page-never-allocated", lambda: StateAllocator(5, 2, {"x": [0, 1]}, [2, 3, 4])),
    ("null-page-never-allocated", lambda: StateAllocator(5, 2, {"x": [1]}, [0, 2, 3, 4])),
    ("null-page-never-allocated", lambda: StateAllocator(5, 2, {"x": [0, 0, 1]}, [2, 3, 4], released={"x": 1})),
    ("released-pages-freed", lambda: StateAllocator(5, 2, {"x": [0, 1]}, [2, 3, 4], released={"x": 2})),
    ("page-in-range", lambda: StateAllocator(5, 2, {"x": [1, 5]}, [2, 3, 4])),
    ("page-in-range", lambda: StateAllocator(5, 2, {"x": [-1]}, [1, 2, 3, 4])),
    ("page-owned-once", lambda: StateAllocator(5, 2, {"x": [1], "y": [2, 1]}, [3, 4])),
    ("tokens-fit-pages", lambda: StateAllocator(5, 2, {"x": [1, 2]}, [3, 4], {"x": 5})),
    ("free-list-unique", lambda: StateAllocator(5, 2, {"x": [1]}, [2, 3, 4, 2])),
    ("free-or-owned", lambda: StateAllocator(5, 2, {"x": [1, 2]}, [2, 3, 4])),
    ("no-page-leak", lambda: StateAllocator(5, 2, {"x": [1]}, [2, 3])),
]


@pytest.mark.parametrize(
    ("name", "build"), ALLOCATOR_CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(ALLOCATOR_CASES)]
)
def test_allocator_invariant_names_itself(name: str, build: Callable[[], StateAllocator]) -> None:
    alloc = build()
    with pytest.raises(InvariantViolation) as info:
        alloc.check_invariants()
    assert info.value.invariant == name
    assert f"invariant {name!r} violated" in str(info.value)


def test_consistent_state_allocator_passes() -> None:
    StateAllocator(5, 2, {"x": [1, 3], "y": []}, [2, 4], {"x": 4}).check_invariants()
    StateAllocator(5, 2, {"x": [0, 0, 3]}, [1, 2, 4], {"x": 6}, released={"x": 2}).check_invariants()


# --- engine-level invariants ------------------------------------------------------------------------------


class OverstatingAllocator(FreeListAllocator):
    """Claims far more free pages than it has, so the fast-forward plans a run that cannot fit."""

    @property
    def num_free_pages(self) -> int:
        return len(self.free_page_ids()) + 1000


def test_fast_forward_pages() -> None:
    cfg = SchedulerConfig(max_prefill_length=16)
    sched = FCFSScheduler(cfg, OverstatingAllocator(num_pages=21, page_size=1))
    latency = get_latency_model("roofline", accelerator="h100-80gb", model="llama-2-7b")
    eng = Engine(sched, SimExecutor(latency, cfg))
    for rid in ("a", "b"):  # each fits alone (19 of 20 pages); together they cannot reach full length
        assert eng.add_request(Request(rid, 4, SamplingParams(max_tokens=15, ignore_eos=True)))
    t = 0.0
    with pytest.raises(InvariantViolation) as info:
        for _ in range(100):
            out = eng.step(t)
            assert out is not None
            t = out.end
    assert info.value.invariant == "fast-forward-pages"


# --- coverage of the list ---------------------------------------------------------------------------------

TRIGGERED = {
    # check_plan
    "token-budget", "max-concurrent-decodes", "scheduled-is-running", "tokens-in-range", "max-prefill-length",
    "pages-allocated", "max-concurrent-prefill", "queued-once", "waiting-or-running", "preempted-not-running",
    "preempted-pages-freed", "waiting-holds-no-pages", "released-behind-window",
    # PageAllocator.check_invariants
    "null-page-never-allocated", "released-pages-freed", "page-in-range", "page-owned-once", "tokens-fit-pages",
    "free-list-unique",
    "free-or-owned", "no-page-leak",
    # Engine (progress: see test_engine.py)
    "fast-forward-pages", "progress",
    # check_swaps
    "swap-out-is-preempted", "swap-in-is-scheduled", "swap-in-pages", "swap-space", "swapped-is-waiting",
}  # fmt: skip


def test_every_named_invariant_has_a_trigger_here() -> None:
    import odrive.allocators.base
    import odrive.core.decode_runs
    import odrive.core.engine
    import odrive.core.invariants

    names: set[str] = set()
    for module in (odrive.core.invariants, odrive.allocators.base, odrive.core.engine, odrive.core.decode_runs):
        # The .py file itself: the module may be a compiled extension (odrive.accel) with the source beside it.
        source = (Path(module.__file__).parent / f"{module.__name__.rpartition('.')[2]}.py").read_text()
        names |= set(re.findall(r"InvariantViolation\(\s*\"([a-z0-9-]+)\"", source))
    assert names == TRIGGERED


def test_invariant_violation_survives_pickling() -> None:
    """Sweeps run simulations in worker processes: the error must cross process boundaries intact."""
    import pickle

    from odrive.errors import InvariantViolation

    err = pickle.loads(pickle.dumps(InvariantViolation("token-budget", "9 > 8")))
    assert err.invariant == "token-budget" and err.detail == "9 > 8"
    assert "token-budget" in str(err)
