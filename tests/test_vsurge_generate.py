"""The real engine's greedy output equals the dense non-paged reference, and every page comes back."""

from __future__ import annotations

import pytest

import odrive
from odrive.models import dense_greedy_generate

PROMPTS = [
    "The engine keeps a pool",
    "Children walked to school along the river",
    "Numbers such as",
    "The old library had tall windows",
    "When a request arrives",
]


@pytest.fixture(scope="module")
def model_and_processor(tiny_checkpoint):
    return odrive.load_model(tiny_checkpoint), odrive.load_processor(tiny_checkpoint)


def make_surge(model, processor, **kw):
    args = dict(
        max_prefill_length=32, prefill_lengths=[8, 16, 32], page_size=4, hbm_utilization=0.001,
        max_concurrent_prefill=2, max_concurrent_decodes=3, seed=877, vsurge_name="test",
    )  # fmt: skip
    args.update(kw)
    return odrive.vSurge.create_odriver(model=model, processor=processor, **args)


def test_greedy_matches_dense_reference_with_shared_small_pages(model_and_processor):
    model, processor = model_and_processor
    surge = make_surge(model, processor)
    params = odrive.SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
    results = surge.generate(PROMPTS, params)
    assert len(results) == len(PROMPTS)
    for prompt, result in zip(PROMPTS, results, strict=True):
        expected = dense_greedy_generate(model.params, model.config, processor.encode(prompt), 12)
        assert result.token_ids == expected, prompt
        assert result.finish_reason == "length"
        assert result.text == processor.decode(expected)
    # max_concurrent_decodes (3) < prompts (5): the running set really was capped
    steps = surge.engine.metrics.steps_frame()
    assert steps["num_running"].max() <= 3
    assert (steps["num_prefill_seqs"] <= 2).all()
    # every page is back in the pool, none leaked or double-owned
    assert surge.num_free_pages == surge.num_usable_pages
    surge.engine.allocator.check_invariants()


def test_greedy_survives_recompute_preemption(model_and_processor):
    """A pool too small for all running sequences forces preemption; output must not change."""
    model, processor = model_and_processor
    # 15 usable pages of 4 tokens: three sequences of ~6 + 16 tokens (6 pages each) cannot all fit.
    small = make_surge(model, processor, max_concurrent_decodes=3, max_length=48, num_pages=16)
    assert small.num_usable_pages == 15
    params = odrive.SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True)
    prompts = PROMPTS[:3]
    results = small.generate(prompts, params)
    requests = small.engine.metrics.requests_frame()
    assert requests["num_preemptions"].sum() > 0, "the small pool should have forced a preemption"
    for prompt, result in zip(prompts, results, strict=True):
        assert result.token_ids == dense_greedy_generate(model.params, model.config, processor.encode(prompt), 16)
    assert small.num_free_pages == small.num_usable_pages


def test_eos_stops_generation(model_and_processor):
    model, processor = model_and_processor
    surge = make_surge(model, processor)
    prompt = processor.encode(PROMPTS[0])
    free_run = dense_greedy_generate(model.params, model.config, prompt, 8)
    stop_at = free_run[3]
    params = odrive.SamplingParams(max_tokens=8, temperature=0.0, stop_token_ids=(stop_at,))
    (result,) = surge.generate([prompt], params)
    assert result.finish_reason == "stop"
    assert result.token_ids == free_run[: free_run.index(stop_at) + 1]
