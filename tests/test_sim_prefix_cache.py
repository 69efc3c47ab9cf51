"""Prefix caching in the simulator: workloads with shared prefixes carry token ids, the prefix-cache
allocator hits them (fewer prefill tokens, lower TTFT), and workloads without ids run as before."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from odrive.allocators import PrefixCacheAllocator
from sim.config import SimConfig
from sim.simulator import SimResult, Simulator
from sim.workloads import (
    SegmentPrompts,
    Uniform,
    Workload,
    WorkloadSpecError,
    multi_turn_workload,
    parse_workload,
    poisson_workload,
    shared_prefix_workload,
)
from sim.workloads.shared_prefix import stream_tokens

NUM_PAGES = 1200  # 19,184 token slots of 16: a small pool keeps the per-step invariant checks cheap


def run(workload: Workload, allocator: str, **config: object) -> tuple[SimResult, Simulator]:
    sim = Simulator(SimConfig(allocator=allocator, num_pages=NUM_PAGES, check_invariants=True, **config), workload)
    return sim.run(), sim


def prefill_tokens(result: SimResult) -> int:
    return int(result.steps["num_prefill_tokens"].sum())


@pytest.fixture(scope="module")
def system_prompts() -> Workload:
    return shared_prefix_workload(
        rate=8, num_requests=150, num_groups=3, prefix_len=800, suffix_len=Uniform(20, 200),
        output_len=Uniform(8, 64), seed=3,
    )  # fmt: skip


# --- workloads ------------------------------------------------------------------------------------


def test_shared_prefix_prompts_share_their_group_prefix(system_prompts: Workload) -> None:
    prompts = system_prompts.prompt_token_ids
    assert isinstance(prompts, SegmentPrompts) and len(prompts) == len(system_prompts)
    firsts = {}
    for i in range(len(system_prompts)):
        ids = prompts[i]
        assert ids.dtype == np.int32 and len(ids) == system_prompts.prompt_lens[i]
        (group, length), (suffix, _) = prompts.segments[i]
        assert length == 800
        firsts.setdefault(group, ids[:800])
        np.testing.assert_array_equal(ids[:800], firsts[group])
    assert len(firsts) == 3
    assert not np.array_equal(prompts[0][800:820], prompts[1][800:820])  # suffixes are unique
    # Deterministic: the same arguments give the same ids (in any process: no salted hashing).
    again = shared_prefix_workload(rate=8, num_requests=150, num_groups=3, prefix_len=800, suffix_len=Uniform(20, 200),
                                   output_len=Uniform(8, 64), seed=3)  # fmt: skip
    np.testing.assert_array_equal(again.prompt_token_ids[7], prompts[7])
    np.testing.assert_array_equal(stream_tokens(12345, 5), [1873, 25207, 3948, 20099, 15530])


def test_slices_keep_their_prompts(system_prompts: Workload) -> None:
    part = system_prompts.slice(10, start=20)
    assert isinstance(part.prompt_token_ids, SegmentPrompts) and len(part.prompt_token_ids) == 10
    np.testing.assert_array_equal(part.prompt_token_ids[0], system_prompts.prompt_token_ids[20])
    with pytest.raises(ValueError, match="prompt_token_ids must hold 3 prompts"):
        Workload(np.zeros(3), np.ones(3), np.ones(3), prompt_token_ids=[np.ones(1)])


def test_ten_thousand_requests_cost_segments_not_tokens() -> None:
    w = shared_prefix_workload(rate=50, num_requests=10_000, num_groups=16, prefix_len=2000, suffix_len=500,
                               output_len=100)  # fmt: skip
    segments = w.prompt_token_ids.segments  # type: ignore[union-attr]
    assert len(segments) == 10_000 and all(len(s) == 2 for s in segments)
    assert w.prompt_lens.sum() == 25_000_000  # 100 MB as int32 arrays, never materialized at once


def test_multi_turn_prompts_extend_the_previous_turn() -> None:
    w = multi_turn_workload(rate=1, num_conversations=5, num_turns=3, think_time=10, user_len=Uniform(5, 30),
                            output_len=Uniform(5, 30), system_len=40, seed=1)  # fmt: skip
    assert len(w) == 15 and (np.diff(w.arrival_times) >= 0).all()
    prompts = w.prompt_token_ids
    assert isinstance(prompts, SegmentPrompts)
    turns: dict[int, list[int]] = {}  # conversation (its first user segment) -> request indices, in order
    for i, segs in enumerate(prompts.segments):
        turns.setdefault(segs[1][0], []).append(i)
    assert len(turns) == 5
    for indices in turns.values():
        assert len(indices) == 3
        for prev, cur in zip(indices, indices[1:], strict=False):
            p, c = prompts[prev], prompts[cur]
            np.testing.assert_array_equal(c[: len(p)], p)  # the earlier prompt is a prefix
            assert len(c) > len(p) + w.output_lens[prev]  # + the earlier output + new user text
    system = {tuple(prompts[i][:40]) for i in range(len(w))}
    assert len(system) == 1  # every conversation shares the system prompt


def test_spec_strings() -> None:
    w = parse_workload("shared-prefix:rate=2,n=20,groups=2,prefix=64,suffix=uniform(1,9),output=4", seed=5)
    assert len(w) == 20 and w.prompt_token_ids is not None and (w.prompt_lens >= 65).all()
    m = parse_workload("multi-turn:rate=1,n=4,turns=2,think=3,user=10,output=20,system=7")
    assert sorted(m.prompt_lens.tolist()) == [17] * 4 + [47] * 4
    with pytest.raises(WorkloadSpecError, match="missing key"):
        parse_workload("shared-prefix:rate=2,n=20")


# --- simulation -----------------------------------------------------------------------------------


def test_shared_system_prompts_hit_the_cache(system_prompts: Workload) -> None:
    cached, sim = run(system_prompts, "prefix-cache")
    plain, _ = run(system_prompts, "free-list")
    for result in (cached, plain):
        assert (result.requests["status"] == "finished").all() and len(result.requests) == len(system_prompts)
        assert result.free_pages_at_end == NUM_PAGES - 1
    alloc = sim.engine.allocator
    assert isinstance(alloc, PrefixCacheAllocator)
    stats = alloc.prefix_stats()
    assert stats.queries == len(system_prompts)
    assert stats.hit_tokens == cached.requests["num_cached_tokens"].sum()
    # measured: hit rate 0.86; 147 of 150 requests hit (all but each group's first), prefill tokens
    # 18,597 instead of 136,197, mean TTFT 6.0 ms instead of 16.2 ms
    assert stats.hit_rate > 0.6
    assert (cached.requests["num_cached_tokens"] > 0).sum() >= len(system_prompts) - 6
    assert prefill_tokens(cached) == prefill_tokens(plain) - stats.hit_tokens
    assert cached.summary["ttft_mean"] < plain.summary["ttft_mean"]


def test_multi_turn_conversations_hit_their_history() -> None:
    w = multi_turn_workload(rate=2, num_conversations=30, num_turns=4, think_time=15, user_len=Uniform(20, 120),
                            output_len=Uniform(20, 120), system_len=200, seed=2)  # fmt: skip
    cached, sim = run(w, "prefix-cache")
    plain, _ = run(w, "free-list")
    assert (cached.requests["status"] == "finished").all()
    stats = sim.engine.allocator.prefix_stats()  # type: ignore[attr-defined]
    assert stats.hit_rate > 0.5  # measured 0.72 (the system prompt and earlier turns' prompts); prefill 28%
    assert prefill_tokens(cached) < 0.5 * prefill_tokens(plain)


def test_memory_pressure_evicts_and_preempts_yet_finishes(system_prompts: Workload) -> None:
    """A pool of 120 pages: cached pages are evicted and requests preempted; all still finish."""
    sim = Simulator(SimConfig(allocator="prefix-cache", num_pages=121, check_invariants=True), system_prompts)
    result = sim.run()
    assert (result.requests["status"] == "finished").all()
    assert result.free_pages_at_end == 120
    stats = sim.engine.allocator.prefix_stats()  # type: ignore[attr-defined]
    assert stats.evictions > 0 and stats.hit_rate > 0  # measured: 3,505 evictions, hit rate 0.62, 22 preemptions
    assert result.summary["preemptions"] > 0


def test_a_recomputed_request_hits_its_own_output_pages_as_on_the_real_engine(system_prompts: Workload) -> None:
    """Simulated outputs carry placeholder ids, so their full pages are cached as the real engine caches its outputs':
    a request preempted after filling some re-admits with prompt and output pages from the cache. Fast-forwarded
    decode runs commit those pages as stepping does."""
    runs = []
    for fast in (True, False):
        sim = Simulator(SimConfig(allocator="prefix-cache", num_pages=121, check_invariants=True), system_prompts)
        sim.engine.fast_forward = fast
        runs.append((sim.run().requests, sim.engine.allocator.prefix_stats()))  # type: ignore[attr-defined]
    (fast, fast_stats), (stepped, stepped_stats) = runs
    preempted = fast[fast["num_preemptions"] > 0]
    assert (preempted["num_cached_tokens"] > preempted["num_prompt_tokens"]).any()
    assert fast_stats == stepped_stats and stepped_stats.evictions > 0
    for column in ("num_cached_tokens", "num_preemptions"):
        np.testing.assert_array_equal(fast[column].to_numpy(), stepped[column].to_numpy(), err_msg=column)
    np.testing.assert_allclose(fast["finish_time"].to_numpy(float), stepped["finish_time"].to_numpy(float), rtol=1e-12)


def test_workloads_without_token_ids_run_as_with_the_free_list() -> None:
    """No ids: nothing is hashed, nothing hits, and every request's timeline equals the free list's."""
    w = poisson_workload(rate=20, num_requests=80, prompt_len=Uniform(10, 600), output_len=Uniform(1, 80), seed=4)
    assert w.prompt_token_ids is None
    cached, sim = run(w, "prefix-cache")
    plain, _ = run(w, "free-list")
    assert sim.engine.allocator.prefix_stats().hit_tokens == 0  # type: ignore[attr-defined]
    assert (cached.requests["num_cached_tokens"] == 0).all()
    cols = ["request_id", "first_token_time", "finish_time", "num_output_tokens", "num_preemptions"]
    pd.testing.assert_frame_equal(cached.requests[cols], plain.requests[cols])


def test_prompt_ids_must_match_prompt_lengths() -> None:
    w = Workload(np.zeros(1), np.array([5]), np.array([2]), prompt_token_ids=[np.arange(4, dtype=np.int32)])
    with pytest.raises(ValueError, match="4 prompt token ids, prompt length 5"):
        Simulator(SimConfig(allocator="prefix-cache", num_pages=64), w).run()
