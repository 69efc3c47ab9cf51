"""Parallel sampling by fork: ``n > 1`` samples of one prompt compute it once, draw their first tokens from the same
logits and share its pages, the partial last page too, copied on first write (``Request.fork_of``,
``PrefixCacheAllocator.fork``, ``Executor.copy_pages``). Their tokens are exactly those of independent requests
(the dense oracle's when greedy); the simulator decides every step as the real engine does."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import odrive
from odrive.core.assembly import EngineSpec
from odrive.core.engine import Engine
from odrive.core.request import FinishReason, Request, RequestStatus
from odrive.core.sampling_params import SamplingParams
from odrive.models import dense_greedy_generate
from odrive.schedulers import SchedulerConfig
from sim.executor import SimExecutor
from sim.hardware import get_accelerator
from sim.latency.roofline import RooflineLatencyModel
from sim.model_spec import get_model_spec

PAGE = 4
PROMPT = [17, 42, 101, 7, 250, 3, 99, 64, 128, 5, 77, 200, 31, 8, 150, 66, 12, 240]  # 4 full pages + 2 tokens
ALIGNED = PROMPT[:16]  # 4 full pages
MAX_TOKENS = 6


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    return odrive.load_model(tiny_checkpoint)


def make_surge(model, **kw) -> odrive.vSurge:
    """23 usable pages of 4 tokens (one KV pool shape for every test: one set of compiles)."""
    args = dict(
        max_prefill_length=32, prefill_lengths=[8, 16, 32], page_size=PAGE, hbm_utilization=0.001,
        max_concurrent_prefill=2, max_concurrent_decodes=4, seed=877, vsurge_name="fork", allocator="prefix-cache",
        check_invariants=True, max_length=48, num_pages=24,
    )  # fmt: skip
    args.update(kw)
    return odrive.vSurge.create_odriver(model=model, **args)


def samples(prompt: list[int], params: SamplingParams, n: int, fork: bool = True, tag: str = "s") -> list[Request]:
    """``n`` requests of ``prompt`` as ``generate`` fans them out (sample ``i`` seeded ``seed + i``), requests
    ``1 .. n-1`` forking from request 0 when ``fork``."""
    out = []
    for i in range(n):
        seed = None if params.seed is None else params.seed + i
        out.append(Request.from_tokens(f"{tag}{i}", prompt, dataclasses.replace(params, seed=seed),
                                       fork_of=f"{tag}0" if fork and i else None))  # fmt: skip
    return out


def drive(engine: Engine, requests: list[Request]) -> None:
    for request in requests:
        engine.add_request(request, now=0.0)
    now = 0.0
    while engine.has_unfinished:
        outcome = engine.step(now)
        assert outcome is not None, "the engine scheduled nothing"
        now = outcome.end


def assert_all_free(engine: Engine) -> None:
    engine.allocator.check_invariants()
    assert engine.allocator.num_free_pages == engine.allocator.num_usable_pages
    assert not engine._forks and not engine._held


def test_greedy_forks_equal_the_dense_oracle_and_copy_the_partial_page_once_per_writer(model):
    surge = make_surge(model)
    params = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True, n=3)
    results = surge.generate([PROMPT], params)
    oracle = dense_greedy_generate(model.params, model.config, PROMPT, MAX_TOKENS)
    assert [r.token_ids for r in results] == [oracle] * 3
    stats = surge.engine.fork_stats
    assert (stats.forks, stats.pages_shared, stats.pages_copied) == (2, 2 * 5, 2)  # 3 writers: the last in place
    steps = surge.engine.metrics.steps_frame()
    assert steps["num_prefill_tokens"].sum() == len(PROMPT)  # the prompt is computed once
    assert_all_free(surge.engine)


def test_seeded_forks_sample_exactly_what_independent_requests_do(model):
    surge = make_surge(model)
    params = SamplingParams(max_tokens=MAX_TOKENS, temperature=1.0, seed=21, ignore_eos=True, n=4)
    forked = [r.token_ids for r in surge.generate([PROMPT], params)]
    assert surge.engine.fork_stats.forks == 3 and surge.engine.fork_stats.pages_copied == 3
    alone = make_surge(model, allocator="free-list", check_invariants=False)
    single = dataclasses.replace(params, n=1)
    independent = [alone.generate([PROMPT], dataclasses.replace(single, seed=21 + i))[0].token_ids for i in range(4)]
    assert forked == independent
    assert len({tuple(t) for t in forked}) > 1
    assert_all_free(surge.engine)


def test_unseeded_forks_draw_each_from_its_own_stream(model):
    params = SamplingParams(max_tokens=MAX_TOKENS, temperature=1.0, ignore_eos=True)
    forked = make_surge(model)
    drive(forked.engine, reqs := samples(PROMPT, params, 3))
    independent = make_surge(model, allocator="free-list", check_invariants=False)
    drive(independent.engine, alone := samples(PROMPT, params, 3, fork=False))
    assert [r.output_token_ids for r in reqs] == [r.output_token_ids for r in alone]
    assert forked.engine.fork_stats.forks == 2


@pytest.mark.parametrize("prompt", [PROMPT, ALIGNED], ids=["partial-last-page", "page-aligned"])
def test_forks_use_fewer_pages_and_prefill_tokens_than_independent_fan_out(model, prompt):
    """Independent samples share only cached full pages (each computes at least its last prompt page itself); after
    copy-on-write every fork holds a private last page too, so a partial last page peaks as high as with the cache."""
    params = SamplingParams(max_tokens=MAX_TOKENS, temperature=1.0, seed=3, ignore_eos=True)
    runs = {}
    for name, allocator, fork in (("fork", "prefix-cache", True), ("cache", "prefix-cache", False),
                                  ("plain", "free-list", False)):  # fmt: skip
        surge = make_surge(model, allocator=allocator)
        reqs = samples(prompt, params, 4, fork=fork)
        drive(surge.engine, reqs)
        steps = surge.engine.metrics.steps_frame()
        runs[name] = (steps["pages_used"].max(), steps["num_prefill_tokens"].sum(), [r.output_token_ids for r in reqs])
        assert_all_free(surge.engine)
    assert runs["fork"][2] == runs["cache"][2] == runs["plain"][2]
    assert runs["fork"][0] <= runs["cache"][0] < runs["plain"][0]
    if prompt is ALIGNED:
        assert runs["fork"][0] < runs["cache"][0]
    assert runs["fork"][1] == len(prompt) < runs["cache"][1] < runs["plain"][1]


def test_a_page_aligned_prompt_shares_every_page_and_copies_none(model):
    surge = make_surge(model)
    params = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True, n=3)
    results = surge.generate([ALIGNED], params)
    assert [r.token_ids for r in results] == [dense_greedy_generate(model.params, model.config, ALIGNED,
                                                                    MAX_TOKENS)] * 3  # fmt: skip
    assert (surge.engine.fork_stats.forks, surge.engine.fork_stats.pages_copied) == (2, 0)
    assert_all_free(surge.engine)


def test_a_parent_aborted_while_prefilling_leaves_its_forks_to_run_as_ordinary_requests(model):
    params = SamplingParams(max_tokens=MAX_TOKENS, temperature=1.0, seed=9, ignore_eos=True)
    surge = make_surge(model, scheduler="sarathi", chunk_size=8)  # the prompt prefills in chunks of 8
    engine = surge.engine
    reqs = samples(PROMPT, params, 3)
    for r in reqs:
        engine.add_request(r, now=0.0)
    engine.step(0.0)
    assert reqs[0].num_computed_tokens == 8 and not reqs[0].output_token_ids
    assert [r.status for r in reqs[1:]] == [RequestStatus.WAITING] * 2 and not engine.scheduler.waiting
    assert engine.abort("s0", 0.0)
    assert [r.request_id for r in engine.scheduler.waiting] == ["s1", "s2"]
    drive(engine, [])
    assert reqs[0].finish_reason is FinishReason.ABORTED
    assert [r.finish_reason for r in reqs[1:]] == [FinishReason.LENGTH] * 2
    assert engine.fork_stats.forks == 0
    alone = make_surge(model, allocator="free-list", check_invariants=False)
    drive(alone.engine, independent := samples(PROMPT, params, 3, fork=False))
    assert [r.output_token_ids for r in reqs[1:]] == [r.output_token_ids for r in independent[1:]]
    assert_all_free(engine)


def test_an_aborted_fork_leaves_the_group(model):
    surge = make_surge(model)
    params = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True)
    reqs = samples(PROMPT, params, 3)
    for r in reqs:
        surge.engine.add_request(r, now=0.0)
    assert surge.engine.abort("s1", 0.0)
    drive(surge.engine, [])
    assert reqs[1].finish_reason is FinishReason.ABORTED and reqs[1].num_output_tokens == 0
    assert reqs[0].output_token_ids == reqs[2].output_token_ids
    assert surge.engine.fork_stats.forks == 1
    assert_all_free(surge.engine)


def test_a_full_running_set_queues_the_forks_that_do_not_fit(model):
    surge = make_surge(model, max_concurrent_decodes=2)
    params = SamplingParams(max_tokens=MAX_TOKENS, temperature=1.0, seed=4, ignore_eos=True, n=4)
    forked = [r.token_ids for r in surge.generate([PROMPT], params)]
    assert surge.engine.fork_stats.forks == 1  # one place left beside the parent; the other two prefill themselves
    alone = make_surge(model, allocator="free-list", check_invariants=False, max_concurrent_decodes=2)
    assert forked == [r.token_ids for r in alone.generate([PROMPT], dataclasses.replace(params, n=4))]
    assert_all_free(surge.engine)


def test_without_fork_support_or_a_usable_parent_requests_run_independently(model):
    params = SamplingParams(max_tokens=3, temperature=0.0, ignore_eos=True)
    surge = make_surge(model, allocator="free-list")
    assert not surge.engine.allocator.supports_fork
    drive(surge.engine, reqs := samples(PROMPT, params, 2))
    assert surge.engine.fork_stats.forks == 0 and reqs[0].output_token_ids == reqs[1].output_token_ids
    surge = make_surge(model)
    orphan = Request.from_tokens("orphan", PROMPT, params, fork_of="nobody")
    drive(surge.engine, [orphan])
    assert orphan.finish_reason is FinishReason.LENGTH and surge.engine.fork_stats.forks == 0
    with pytest.raises(ValueError, match="prompt differs"):
        surge.engine.add_request(Request.from_tokens("p", PROMPT, params), now=0.0)
        surge.engine.add_request(Request.from_tokens("c", ALIGNED, params, fork_of="p"), now=0.0)


def test_the_simulator_decides_every_step_of_forked_samples_as_the_real_engine(model):
    """A tight pool (preemptions) and prompts of several lengths, n = 3 each: same plans, pages, forks and copies."""
    surge = make_surge(model, num_pages=20, max_concurrent_decodes=6)
    sched_cfg = surge.engine.scheduler.config
    spec = EngineSpec(sched_cfg, num_pages=20, page_size=PAGE, allocator="prefix-cache", check_invariants=True,
                      fast_forward=False)  # fmt: skip
    latency = RooflineLatencyModel(get_accelerator("h100-80gb"), get_model_spec("tiny-bench"))
    sim = spec.build(SimExecutor(latency, sched_cfg))
    params = SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True)
    prompts = [PROMPT, ALIGNED, PROMPT[:9]]

    def workload() -> list[Request]:
        return [r for k, p in enumerate(prompts) for r in samples(p, params, 3, tag=f"p{k}-")]

    plans = {}
    for name, engine in (("real", surge.engine), ("sim", sim)):
        rows: list[tuple] = []
        engine.outcome_listeners.append(
            lambda o, rows=rows: rows.append((dict(o.plan.num_scheduled_tokens), list(o.plan.preempted))))
        drive(engine, workload())
        steps = engine.metrics.steps_frame()
        plans[name] = (rows, steps["pages_used"].tolist(), dataclasses.astuple(engine.fork_stats)[:3])
        assert_all_free(engine)
    assert plans["real"] == plans["sim"]
    assert sum(len(p) for _, p in plans["real"][0]) > 0, "the pool must be small enough to preempt"
    assert plans["real"][2][0] > 0 and plans["real"][2][2] > 0


# --- properties, in the simulator (the same engine; no model) ---------------------------------------------------------
def sim_engine(page_size: int, num_pages: int, scheduler: str = "fcfs", **cfg: object) -> Engine:
    fields = dict(max_prefill_length=64, max_concurrent_prefill=2, max_concurrent_decodes=16, max_model_len=80)
    fields.update(cfg)
    sched_cfg = SchedulerConfig(**fields)  # type: ignore[arg-type]
    spec = EngineSpec(sched_cfg, num_pages=num_pages, page_size=page_size, scheduler=scheduler,
                      allocator="prefix-cache", check_invariants=True, fast_forward=False)  # fmt: skip
    latency = RooflineLatencyModel(get_accelerator("h100-80gb"), get_model_spec("tiny-bench"))
    return spec.build(SimExecutor(latency, sched_cfg))


@st.composite
def fork_groups(draw: st.DrawFn) -> tuple[int, list[list[Request]]]:
    """A page size and groups of samples of one prompt each (distinct prompts), each sample its own max_tokens."""
    page_size = draw(st.sampled_from([1, 2, 4, 16]))
    groups = []
    for g in range(draw(st.integers(1, 4))):
        length = draw(st.integers(1, 40))
        prompt = [1000 * (g + 1) + i for i in range(length)]
        lengths = draw(st.lists(st.integers(1, 8), min_size=1, max_size=4))
        groups.append([Request.from_tokens(f"g{g}-{i}", prompt, SamplingParams(max_tokens=m, ignore_eos=True),
                                           fork_of=f"g{g}-0" if i else None)
                       for i, m in enumerate(lengths)])  # fmt: skip
    return page_size, groups


@given(fork_groups())
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_forks_copy_a_shared_partial_page_once_per_writer_but_the_last(case: tuple[int, list[list[Request]]]) -> None:
    """A roomy pool (no preemption): every sample forks, and a group whose prompt ends in a partial page copies it once
    for each of its writers (samples that decode past their first token) but the last."""
    page_size, groups = case
    engine = sim_engine(page_size, num_pages=2000 // page_size)
    drive(engine, [r for group in groups for r in group])
    assert all(r.finish_reason is FinishReason.LENGTH and r.num_output_tokens == r.sampling_params.max_tokens
               for group in groups for r in group)  # fmt: skip
    writers = [sum(r.sampling_params.max_tokens > 1 for r in group) for group in groups]
    partial = [group[0].num_prompt_tokens % page_size != 0 for group in groups]
    stats = engine.fork_stats
    assert stats.forks == sum(len(group) - 1 for group in groups)
    assert stats.pages_copied == sum(max(w - 1, 0) for w, p in zip(writers, partial, strict=True) if p)
    assert (stats.seconds > 0) == (stats.pages_copied > 0)
    steps = engine.metrics.steps_frame()
    assert steps["num_prefill_tokens"].sum() <= sum(group[0].num_prompt_tokens for group in groups)
    assert_all_free(engine)


@given(fork_groups(), st.sampled_from(["fcfs", "sarathi", "priority"]), st.sampled_from(["recompute", "swap"]),
       st.integers(12, 40), st.lists(st.tuples(st.integers(0, 30), st.integers(0, 20)), max_size=3))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_forks_under_preemption_and_aborts_keep_every_invariant(
    case: tuple[int, list[list[Request]]], scheduler: str, mode: str, pool: int, aborts: list[tuple[int, int]]
) -> None:
    """A tight pool (preemptions, recompute or swap), aborts at random steps (of held forks, prefilling parents,
    running samples): every invariant holds each step, every request ends, no page leaks, copies never outnumber
    forks."""
    page_size, groups = case
    requests = [r for group in groups for r in group]
    need = max(-(-(r.num_prompt_tokens + r.sampling_params.max_tokens) // page_size) for r in requests)
    engine = sim_engine(page_size, num_pages=max(pool // page_size, need + 1) + 1, scheduler=scheduler,
                        preemption_mode=mode, swap_space_pages=64 if mode == "swap" else 0,
                        chunk_size=8 if scheduler == "sarathi" else None, max_concurrent_decodes=4)  # fmt: skip
    for request in requests:
        engine.add_request(request, now=0.0)
    now, step = 0.0, 0
    while engine.has_unfinished:
        for at, which in aborts:
            if at == step:
                engine.abort(requests[which % len(requests)].request_id, now)
        outcome = engine.step(now)
        if outcome is not None:
            now = outcome.end
        step += 1
        assert step < 2000
    assert all(r.is_done for r in requests)
    assert engine.fork_stats.pages_copied <= engine.fork_stats.forks
    assert_all_free(engine)
