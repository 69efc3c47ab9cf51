"""Swap preemption: K/V pages go to a host tier and come back, for every scheduler — in the simulator (modeled
copy time), through a token-producing executor that keeps page contents, and on the real JAX engine."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from policy_checks import PROPERTY, RecordingSimExecutor, assert_terminates, scenarios, simulate

import odrive
from odrive.allocators import make_allocator
from odrive.core.engine import Engine
from odrive.core.executor import ExecuteResult, Executor, SeqChunk, SwapOps
from odrive.core.request import FinishReason, Request
from odrive.core.sampling_params import SamplingParams
from odrive.errors import ConfigError
from odrive.schedulers import SCHEDULERS, SchedulerConfig, make_scheduler
from sim.config import SimConfig
from sim.hardware import get_accelerator
from sim.model_spec import get_model_spec
from sim.workloads import Workload

POLICIES = [name for name in SCHEDULERS.names() if name != "token-budget"]  # an alias of sarathi


# --- the simulator --------------------------------------------------------------------------------------


@PROPERTY
@given(st.sampled_from(POLICIES).flatmap(lambda name: scenarios(name, priorities=True, preemption_mode="swap")))
def test_every_policy_terminates_with_swap_preemption(scenario: tuple[SimConfig, Workload]) -> None:
    run = simulate(*scenario)
    assert_terminates(run)
    stats = run.engine.swap_stats
    assert stats.pages_in == stats.pages_out, "a swapped-out request never came back"


def pressure() -> Workload:
    """Two requests that fit together at first but not at full length: the newer one must be preempted."""
    return Workload(np.array([0.0, 0.0]), np.array([40, 40]), np.array([60, 60]))


@pytest.mark.parametrize("policy", POLICIES)
def test_swap_time_is_modeled_from_host_bandwidth(policy: str) -> None:
    config = SimConfig(scheduler=policy, page_size=4, num_pages=41, max_prefill_length=64, preemption_mode="swap",
                       swap_space_pages=40, check_invariants=True)  # fmt: skip
    run = simulate(config, pressure(), fast_forward=False)
    assert_terminates(run)
    stats = run.engine.swap_stats
    assert stats.pages_out > 0 and stats.pages_in == stats.pages_out
    kv = get_model_spec(config.model).kv_bytes_per_page(config.page_size)
    bandwidth = get_accelerator(config.accelerator).host_bandwidth
    assert stats.seconds == pytest.approx((stats.pages_out + stats.pages_in) * kv / bandwidth)
    recorder = run.engine.executor
    assert isinstance(recorder, RecordingSimExecutor)
    assert run.steps["duration"].sum() == pytest.approx(recorder.compute_seconds + stats.seconds)
    # A swapped request keeps its computed tokens: no step re-prefills it.
    assert run.steps["num_prefill_seqs"].sum() == 2


def test_recompute_mode_and_a_full_host_tier_recompute() -> None:
    for mode, space in (("recompute", None), ("swap", 1)):
        config = SimConfig(page_size=4, num_pages=41, max_prefill_length=64, preemption_mode=mode,
                           swap_space_pages=space, check_invariants=True)  # fmt: skip
        run = simulate(config, pressure())
        assert_terminates(run)
        assert run.requests["num_preemptions"].sum() >= 1 and run.engine.swap_stats.pages_out == 0


def test_cli_passes_preemption_mode_and_policy_options(tmp_path, capsys) -> None:
    from sim.cli import main

    out = tmp_path / "run"
    assert main(["--workload", "poisson:rate=50,n=60,prompt=uniform(8,64),output=uniform(8,64)", "--num-pages", "30",
                 "--scheduler", "sjf", "--scheduler-arg", "predictor=bucket-mean", "--scheduler-arg", "aging=50",
                 "--preemption-mode", "swap", "--swap-space-gib", "0.05", "--page-size", "4",
                 "--out", str(out), "--no-progress"]) == 0  # fmt: skip
    assert "scheduler=sjf, preemption=swap" in capsys.readouterr().out
    assert (out / "requests.csv").exists()


def test_default_swap_space_is_four_gib_of_pages() -> None:
    config = SimConfig(preemption_mode="swap", page_size=16)
    page = get_model_spec(config.model).kv_bytes_per_page(16)
    assert config.scheduler_config().swap_space_pages == 4 * 2**30 // page
    assert SimConfig().scheduler_config().swap_space_pages == 0
    with pytest.raises(ConfigError, match="swap_space_pages"):
        SchedulerConfig(preemption_mode="swap")
    with pytest.raises(ConfigError, match="preemption_mode"):
        SchedulerConfig(preemption_mode="discard")


# --- a token-producing executor that keeps each page's contents -------------------------------------------


def next_token(context: list[int]) -> int:
    """The 'model': a function of the whole context, so any lost or misplaced K/V changes the output."""
    h = 17
    for t in context:
        h = (h * 31 + t) % 1_000_003
    return 10 + h % 500


def reference(prompt: list[int], max_tokens: int) -> list[int]:
    seq = list(prompt)
    for _ in range(max_tokens):
        seq.append(next_token(seq))
    return seq[len(prompt) :]


class PageMemoryExecutor(Executor):
    """Stores the token written into every KV slot; reads a request's context back from its pages, so a
    swap that loses or misplaces pages produces different tokens. Swaps copy slot contents to a host dict."""

    def __init__(self, page_size: int) -> None:
        self.page_size = page_size
        self.slots: dict[tuple[int, int], int] = {}
        self.host: dict[str, list[list[int | None]]] = {}

    def _read(self, table: list[int], n: int) -> list[int | None]:
        ps = self.page_size
        return [self.slots.get((table[i // ps], i % ps)) for i in range(n)]

    def execute(self, batch: list[SeqChunk]) -> ExecuteResult:
        ps = self.page_size
        sampled = {}
        for c in batch:
            tokens = c.request.all_token_ids
            assert self._read(c.page_table, c.start) == tokens[: c.start], f"{c.request_id}: context lost"
            for i in range(c.start, c.kv_len):
                self.slots[(c.page_table[i // ps], i % ps)] = tokens[i]
            if c.sample:
                sampled[c.request_id] = next_token(self._read(c.page_table, c.kv_len))  # type: ignore[arg-type]
        return ExecuteResult(1.0, sampled)

    def swap(self, ops: SwapOps) -> float:
        ps = self.page_size
        for rid, pages in ops.swap_out.items():
            self.host[rid] = [[self.slots.get((p, i)) for i in range(ps)] for p in pages]
        for rid, pages in ops.swap_in.items():
            saved = self.host.pop(rid)
            assert len(saved) == len(pages)
            for p, contents in zip(pages, saved, strict=True):
                for i, t in enumerate(contents):
                    self.slots[(p, i)] = t  # type: ignore[assignment]
        return 0.25 * ops.num_pages

    def discard_swapped(self, request_id: str) -> None:
        self.host.pop(request_id, None)


def memory_engine(policy: str, num_pages: int, page_size: int, **limits: object) -> tuple[Engine, PageMemoryExecutor]:
    cfg = SchedulerConfig(preemption_mode="swap", **limits)  # type: ignore[arg-type]
    ex = PageMemoryExecutor(page_size)
    sched = make_scheduler(policy, cfg, make_allocator("free-list", num_pages, page_size))
    return Engine(sched, ex, check_invariants=True), ex


def drain(engine: Engine, t: float = 0.0) -> float:
    for _ in range(20_000):
        if not engine.has_unfinished:
            return t
        out = engine.step(t)
        assert out is not None, "requests remain but nothing was scheduled"
        t = out.end
    raise AssertionError("engine did not drain")


@PROPERTY
@given(
    policy=st.sampled_from(POLICIES),
    prompts=st.lists(st.lists(st.integers(0, 300), min_size=1, max_size=20), min_size=3, max_size=10),
    outputs=st.lists(st.integers(1, 24), min_size=10, max_size=10),
    pool=st.integers(24, 64),
    page_size=st.sampled_from([1, 2, 4]),
    swap_pages=st.integers(4, 40),
    budget=st.integers(4, 64),
)
def test_swapped_requests_continue_exactly(policy: str, prompts: list[list[int]], outputs: list[int], pool: int,
                                           page_size: int, swap_pages: int, budget: int) -> None:  # fmt: skip
    eng, ex = memory_engine(policy, 1 + pool // page_size, page_size, max_prefill_length=24, max_concurrent_decodes=6,
                            max_num_batched_tokens=budget, swap_space_pages=swap_pages)  # fmt: skip
    reqs = [Request.from_tokens(f"r{i}", p, SamplingParams(max_tokens=o, ignore_eos=True), priority=i % 3)
            for i, (p, o) in enumerate(zip(prompts, outputs, strict=False))]  # fmt: skip
    for r in reqs:
        eng.add_request(r)
    drain(eng)
    for r in reqs:
        if r.finish_reason is FinishReason.REJECTED:
            continue
        assert r.output_token_ids == reference(list(r.prompt_token_ids), r.sampling_params.max_tokens)  # type: ignore[arg-type]
    assert ex.host == {} and len(eng.scheduler.swap_space) == 0
    assert eng.swap_stats.pages_in == eng.swap_stats.pages_out
    assert eng.allocator.num_free_pages == eng.allocator.num_usable_pages


def test_a_swap_happens_and_its_copy_time_is_added_to_the_step() -> None:
    eng, ex = memory_engine("fcfs", 11, 1, max_prefill_length=16, swap_space_pages=8)
    a = Request.from_tokens("a", [1, 2, 3, 4], SamplingParams(max_tokens=6, ignore_eos=True))
    b = Request.from_tokens("b", [5, 6, 7, 8], SamplingParams(max_tokens=6, ignore_eos=True))
    eng.add_request(a)
    eng.add_request(b)
    t, durations = 0.0, []
    while eng.has_unfinished:
        out = eng.step(t)
        assert out is not None
        durations.append((out.duration, out.plan.swap_out, out.plan.swap_in))
        t = out.end
    swaps = [(d, o, i) for d, o, i in durations if o or i]
    assert swaps and all(d == 1.0 + 0.25 * sum(map(len, [*o.values(), *i.values()])) for d, o, i in swaps)
    assert a.output_token_ids == reference([1, 2, 3, 4], 6) and b.output_token_ids == reference([5, 6, 7, 8], 6)
    assert b.num_preemptions >= 1 and eng.swap_stats.pages_out > 0


def test_abort_while_swapped_out_drops_the_host_copy() -> None:
    eng, ex = memory_engine("fcfs", 11, 1, max_prefill_length=16, swap_space_pages=8)
    for rid, prompt in (("a", [1, 2, 3, 4]), ("b", [5, 6, 7, 8])):
        eng.add_request(Request.from_tokens(rid, prompt, SamplingParams(max_tokens=6, ignore_eos=True)))
    t = 0.0
    while "b" not in eng.scheduler.swap_space:
        out = eng.step(t)
        assert out is not None
        t = out.end
    assert "b" in ex.host
    assert eng.abort("b", now=t)
    assert "b" not in ex.host and len(eng.scheduler.swap_space) == 0
    drain(eng, t)
    assert eng.allocator.num_free_pages == eng.allocator.num_usable_pages


def test_preempting_a_request_swapped_in_this_very_step_undoes_the_swap_in() -> None:
    from odrive.core.invariants import check_plan
    from odrive.schedulers import FCFSScheduler, StepPlan

    cfg = SchedulerConfig(max_prefill_length=16, preemption_mode="swap", swap_space_pages=8)
    sched = FCFSScheduler(cfg, make_allocator("free-list", 9, 1))  # 8 one-token pages
    b = Request("b", 2, SamplingParams(max_tokens=9))
    sched.add_request(b)
    sched.admit(b)
    assert sched.allocator.allocate("b", 3)
    b.num_output_tokens, b.num_computed_tokens = 1, 2
    first = StepPlan()
    sched.preempt(b, first)  # b's 2 computed tokens go to the host
    assert first.swap_out == {"b": [1, 2]} and sched.swap_space.held == {"b": 2}
    a = Request("a", 4, SamplingParams(max_tokens=9))
    sched.add_request(a)
    sched.waiting.remove(a)
    sched.waiting.appendleft(a)
    sched.admit(a)
    assert sched.allocator.allocate("a", 5)
    a.num_output_tokens, a.num_computed_tokens = 2, 5  # its next decode needs a sixth page
    # b is swapped back in (3 pages: the last free ones), then a's decode finds no page and preempts the
    # newest — b again, whose K/V never left the host: the swap-in is dropped, nothing is copied.
    plan = sched.schedule()
    check_plan(sched, plan)
    assert plan.num_scheduled_tokens == {"a": 1} and plan.preempted == ["b"]
    assert plan.swap_in == {} and plan.swap_out == {}
    assert sched.swap_space.held == {"b": 2} and b.num_computed_tokens == 2 and b.num_preemptions == 2
    assert sched.waiting[0] is b and sched.allocator.page_table("b") == []


# --- the real engine ---------------------------------------------------------------------------------------


def test_host_kv_store_round_trips_pages_of_every_layer() -> None:
    import jax
    import jax.numpy as jnp

    from odrive.runtime.kv_swap import HostKVStore

    layers, per_layer = 3, 8
    shape = (2, layers * per_layer, 4, 5)
    k = jax.random.normal(jax.random.key(0), shape)
    v = jax.random.normal(jax.random.key(1), shape)
    store = HostKVStore(layers, per_layer)
    before_k, before_v = np.asarray(k), np.asarray(v)
    store.swap_out((k, v), "r", [2, 5, 3])
    k2, v2 = store.swap_in((jnp.zeros(shape), jnp.zeros(shape)), "r", [7, 1, 6])
    for layer in range(layers):
        for src, dst in ((2, 7), (5, 1), (3, 6)):
            row, old = layer * per_layer + dst, layer * per_layer + src
            np.testing.assert_array_equal(np.asarray(k2)[:, row], before_k[:, old])
            np.testing.assert_array_equal(np.asarray(v2)[:, row], before_v[:, old])
    assert "r" not in store


PROMPTS = ["The engine keeps a pool", "Children walked to school along the river", "Numbers such as"]


@pytest.fixture(scope="module")
def model_and_processor(tiny_checkpoint):
    return odrive.load_model(tiny_checkpoint), odrive.load_processor(tiny_checkpoint)


def test_real_engine_swapped_and_recomputed_requests_match_the_dense_reference(model_and_processor):
    from odrive.models import dense_greedy_generate

    model, processor = model_and_processor
    # 15 usable pages of 4 tokens: three sequences of ~6 + 16 tokens (6 pages each) cannot all fit. The host
    # tier (8 pages) takes the first victim; later ones find it full and are recomputed.
    surge = odrive.vSurge.create_odriver(
        model=model, processor=processor, max_prefill_length=32, prefill_lengths=[8, 16, 32], page_size=4,
        max_concurrent_prefill=2, max_concurrent_decodes=3, max_length=48, num_pages=16, seed=877,
        vsurge_name="swap", scheduler="sarathi", preemption_mode="swap", swap_space_pages=8, check_invariants=True,
    )  # fmt: skip
    params = odrive.SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True)
    results = surge.generate(PROMPTS, params)
    stats = surge.engine.swap_stats
    preemptions = int(surge.engine.metrics.requests_frame()["num_preemptions"].sum())
    assert stats.requests_out >= 1 and stats.pages_in == stats.pages_out, stats
    assert preemptions - stats.requests_out >= 1, "expected a recomputed preemption too"
    for prompt, result in zip(PROMPTS, results, strict=True):
        assert result.token_ids == dense_greedy_generate(model.params, model.config, processor.encode(prompt), 16)
    assert surge.num_free_pages == surge.num_usable_pages and len(surge.executor.host_kv) == 0
