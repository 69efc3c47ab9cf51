"""Prefix caching on the real engine: a second request reuses the K/V pages of a shared prefix, computes
fewer prefill tokens, and still produces exactly the dense reference's greedy tokens."""

from __future__ import annotations

import pytest

import odrive
from odrive.allocators import PrefixCacheAllocator
from odrive.models import dense_greedy_generate

PREFIX = [17, 42, 101, 7, 250, 3, 99, 64, 128, 5, 77, 200, 31, 8, 150, 66, 12, 240, 90, 45]  # 5 pages of 4
FIRST = [*PREFIX, 11, 22, 33]
SECOND = [*PREFIX, 44, 55]
MAX_TOKENS = 10


@pytest.fixture(scope="module")
def model_and_processor(tiny_checkpoint):
    return odrive.load_model(tiny_checkpoint), odrive.load_processor(tiny_checkpoint)


def make_surge(model, processor, **kw):
    """15 usable pages of 4 tokens (every test shares one KV pool shape, so one set of compiles)."""
    args = dict(
        max_prefill_length=32, prefill_lengths=[8, 16, 32], page_size=4, hbm_utilization=0.001,
        max_concurrent_prefill=2, max_concurrent_decodes=3, seed=877, vsurge_name="pc", allocator="prefix-cache",
        check_invariants=True, max_length=48, num_pages=16,
    )  # fmt: skip
    args.update(kw)
    return odrive.vSurge.create_odriver(model=model, processor=processor, **args)


def test_shared_prefix_is_served_from_cache_and_output_is_unchanged(model_and_processor):
    model, processor = model_and_processor
    surge = make_surge(model, processor)
    alloc = surge.engine.allocator
    assert isinstance(alloc, PrefixCacheAllocator)
    params = odrive.SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True)
    (first,) = surge.generate([FIRST], params)
    steps_before = len(surge.engine.metrics.steps_frame())
    (second,) = surge.generate([SECOND], params)

    for prompt, result in ((FIRST, first), (SECOND, second)):
        assert result.token_ids == dense_greedy_generate(model.params, model.config, prompt, MAX_TOKENS)
    requests = surge.engine.metrics.requests_frame().set_index("request_id")
    assert requests["num_cached_tokens"].tolist() == [0, len(PREFIX)]
    # The second request's prefill computed only its own two tokens.
    steps = surge.engine.metrics.steps_frame()
    assert steps["num_prefill_tokens"].iloc[steps_before:].sum() == len(SECOND) - len(PREFIX)
    assert steps["num_prefill_tokens"].iloc[:steps_before].sum() == len(FIRST)
    stats = alloc.prefix_stats()
    assert (stats.queries, stats.hits, stats.hit_tokens) == (2, 1, len(PREFIX))
    # Every page is back: unreferenced (some still cached, hence reusable), none leaked.
    assert surge.num_free_pages == surge.num_usable_pages
    assert all(alloc.refcount(p) == 0 for p in range(alloc.num_pages))
    assert stats.cached_pages > 0
    alloc.check_invariants()


def test_generated_tokens_are_cached_too(model_and_processor):
    """A follow-up prompt that repeats an earlier prompt and its answer hits the answer's full pages."""
    model, processor = model_and_processor
    surge = make_surge(model, processor)
    params = odrive.SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True)
    (first,) = surge.generate([FIRST], params)
    follow_up = [*FIRST, *first.token_ids, 9]  # 23 + 10 + 1 = 34 tokens: the last sampled token has no K/V
    follow_up = follow_up[:32]
    (second,) = surge.generate([follow_up], params)
    assert second.token_ids == dense_greedy_generate(model.params, model.config, follow_up, MAX_TOKENS)
    cached = surge.engine.metrics.requests_frame()["num_cached_tokens"].tolist()
    # K/V exists for the first 23 + 9 = 32 tokens (the 10th output was sampled, never computed): 8 full pages,
    # but a request must compute at least its last token, so 7 pages (28 tokens) are matched.
    assert cached == [0, 28]
    assert surge.num_free_pages == surge.num_usable_pages


def test_running_requests_share_prefix_pages(model_and_processor):
    """One prefill per step: the first request's prefix pages are cached before the next is admitted, so the
    three requests decode together while sharing (refcount 3) the same five prefix pages."""
    model, processor = model_and_processor
    surge = make_surge(model, processor, max_concurrent_prefill=1)
    prompts = [FIRST, SECOND, [*PREFIX, 3]]
    params = odrive.SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)  # 5 shared + 7 own pages
    results = surge.generate(prompts, params)
    for prompt, result in zip(prompts, results, strict=True):
        assert result.token_ids == dense_greedy_generate(model.params, model.config, prompt, 6)
    requests = surge.engine.metrics.requests_frame()
    assert sorted(requests["num_cached_tokens"]) == [0, len(PREFIX), len(PREFIX)]
    assert surge.engine.metrics.steps_frame()["num_running"].max() == 3
    assert surge.num_free_pages == surge.num_usable_pages


def test_recompute_preemption_resumes_from_its_own_cached_pages(model_and_processor):
    """A pool too small for three sequences forces preemption; a preempted request's full pages stay
    cached, so its re-admission recomputes only what was evicted — and the output does not change."""
    model, processor = model_and_processor
    surge = make_surge(model, processor)
    prompts = [FIRST, [5, 6, 7, 8, 9, 10, 11], [*PREFIX[:9], 1]]
    params = odrive.SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True)
    results = surge.generate(prompts, params)
    for prompt, result in zip(prompts, results, strict=True):
        assert result.token_ids == dense_greedy_generate(model.params, model.config, prompt, 16)
    requests = surge.engine.metrics.requests_frame()
    preempted = requests[requests["num_preemptions"] > 0]
    assert len(preempted) > 0, "the small pool should have forced a preemption"
    assert (preempted["num_cached_tokens"] > 0).any(), "a re-admitted request should hit its own pages"
    assert surge.num_free_pages == surge.num_usable_pages


def test_parallel_samples_share_the_prompt_pages(model_and_processor):
    """n > 1 fans out into n requests; samples 1 and 2 fork from sample 0: the prompt is computed once and its pages
    shared, the partial last page copied on first write (tests/test_parallel_sampling_fork.py)."""
    model, processor = model_and_processor
    surge = make_surge(model, processor, max_concurrent_prefill=1)
    params = odrive.SamplingParams(max_tokens=4, temperature=1.0, seed=5, n=3, ignore_eos=True)
    results = surge.generate([FIRST], params)
    assert len(results) == 3
    assert surge.engine.metrics.steps_frame()["num_prefill_tokens"].sum() == len(FIRST)
    stats = surge.engine.fork_stats
    assert (stats.forks, stats.pages_shared, stats.pages_copied) == (2, 2 * 6, 2)  # 23 tokens: 5 full pages + 3
    for i, result in enumerate(results):  # identical to the same sample run alone, without sharing
        alone = make_surge(model, processor, allocator="free-list", check_invariants=False)
        seeded = odrive.SamplingParams(max_tokens=4, temperature=1.0, seed=5 + i, ignore_eos=True)
        assert result.token_ids == alone.generate([FIRST], seeded)[0].token_ids
    assert surge.num_free_pages == surge.num_usable_pages
