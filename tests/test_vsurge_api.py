"""vSurge's user API: streaming, asyncio, background thread, abort, bad input, and parameters that act."""

from __future__ import annotations

import asyncio

import pytest

import odrive
from odrive.core.sampling_params import SamplingParams
from odrive.models import dense_greedy_generate

GREEDY = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)


@pytest.fixture(scope="module")
def mp(tiny_checkpoint):
    return odrive.load_model(tiny_checkpoint), odrive.load_processor(tiny_checkpoint)


@pytest.fixture
def surge(mp):
    model, processor = mp
    s = odrive.vSurge.create_odriver(
        model=model, processor=processor, max_prefill_length=32, prefill_lengths=[8, 16, 32], page_size=4,
        hbm_utilization=0.001, max_concurrent_prefill=2, max_concurrent_decodes=3, seed=877, vsurge_name="api",
    )  # fmt: skip
    yield s
    s.stop()


def expected(mp, prompt: str, n: int) -> list[int]:
    model, processor = mp
    return dense_greedy_generate(model.params, model.config, processor.encode(prompt), n)


def test_stream_yields_every_token_then_a_final_delta(surge, mp):
    deltas = list(surge.stream("The engine keeps a pool", GREEDY))
    assert deltas[-1].finished and deltas[-1].finish_reason == "length"
    tokens = [t for d in deltas for t in d.token_ids]
    assert tokens == expected(mp, "The engine keeps a pool", 6)
    assert "".join(d.text for d in deltas) == deltas[-1].result.text
    assert surge.num_free_pages == surge.num_usable_pages


def test_background_thread_generate_and_async_forms(surge, mp):
    surge.start()
    results = surge.generate(["Numbers such as", "When a request"], GREEDY)
    assert [r.token_ids for r in results] == [expected(mp, p, 6) for p in ("Numbers such as", "When a request")]

    async def run() -> tuple[list, list]:
        agen = await surge.agenerate(["Children walked"], GREEDY)
        deltas = [d async for d in surge.astream("Children walked", GREEDY)]
        return agen, deltas

    agen, deltas = asyncio.run(run())
    assert agen[0].token_ids == expected(mp, "Children walked", 6)
    assert [t for d in deltas for t in d.token_ids] == agen[0].token_ids
    surge.stop()
    assert surge.num_free_pages == surge.num_usable_pages


def test_abort_frees_pages_and_leaves_others_intact(surge, mp):
    keep = surge.submit("The old library", GREEDY)
    victim = surge.submit("Children walked to school", SamplingParams(max_tokens=20, temperature=0.0))
    surge.step()  # both prefill
    surge.step()
    assert surge.abort(victim.request_id)
    assert victim.done and victim.result().finish_reason == "aborted"
    while not keep.done:
        surge.step()
    assert keep.result().token_ids == expected(mp, "The old library", 6)
    assert surge.num_free_pages == surge.num_usable_pages
    assert not surge.abort(victim.request_id)  # already gone


@pytest.mark.parametrize(
    ("prompt", "params", "message"),
    [
        ("", GREEDY, "empty prompt"),
        ([5, 10_000], GREEDY, "outside the vocabulary"),
        ("word " * 40, GREEDY, "max_prefill_length"),
        ("The engine", SamplingParams(max_tokens=60), "max_length"),
    ],
)
def test_bad_input_is_rejected_without_disturbing_in_flight_requests(surge, mp, prompt, params, message):
    good = surge.submit("The engine keeps a pool", GREEDY)
    surge.step()
    with pytest.raises(ValueError, match=message.replace("max_length", "max_model_len")):
        surge.generate([prompt], params)
    while not good.done:
        surge.step()
    assert good.result().token_ids == expected(mp, "The engine keeps a pool", 6)
    assert surge.num_free_pages == surge.num_usable_pages


def test_invalid_sampling_params_raise():
    with pytest.raises(ValueError, match="max_tokens"):
        SamplingParams(max_tokens=0)
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0.0)
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=-1.0)


def test_stop_string_ends_generation_and_is_cut_from_text(surge, mp):
    _, processor = mp
    prompt = "The engine keeps a pool"
    full = surge.generate([prompt], SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True))[0]
    pieces = [processor.decode([t]) for t in full.token_ids[1:]]
    piece = next((p for p in pieces if p.strip() and p.isascii() and p.isprintable()), None)
    assert piece is not None, f"no printable token among {pieces!r}"
    params = SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True, stop=(piece,))
    result = surge.generate([prompt], params)[0]
    assert result.finish_reason == "stop"
    assert piece not in result.text
    assert result.text == full.text[: full.text.find(piece)]
    assert result.token_ids == full.token_ids[: len(result.token_ids)]
    assert len(result.token_ids) < len(full.token_ids)


def test_seeded_sampling_is_reproducible_and_seed_matters(surge):
    params = SamplingParams(max_tokens=8, temperature=1.0, top_k=50, top_p=0.95, seed=7)
    a = surge.generate(["The engine"], params)[0].token_ids
    b = surge.generate(["The engine"], params)[0].token_ids
    c = surge.generate(["The engine"], SamplingParams(max_tokens=8, temperature=1.0, seed=8))[0].token_ids
    assert a == b
    assert a != c


def test_every_create_odriver_parameter_acts(mp):
    """Each argument observed in what the engine does, not in what it stored."""
    import threading

    model, processor = mp

    def make(**kw):  # noqa: ANN003, ANN202
        args = dict(model=model, processor=processor, max_prefill_length=16, prefill_lengths=[4, 16], page_size=8,
                    hbm_utilization=0.0005, max_concurrent_prefill=1, max_concurrent_decodes=2, seed=1,
                    vsurge_name="named")  # fmt: skip
        return odrive.vSurge.create_odriver(**{**args, **kw})

    s = make()
    prompts = ["The engine", "A page of", "Tokens flow", "One more"]
    sampled = SamplingParams(max_tokens=6, temperature=1.0, ignore_eos=True)  # no seed of its own
    results = s.generate(prompts, sampled)
    steps = s.engine.metrics.steps_frame()
    # max_concurrent_prefill / max_concurrent_decodes bound what each recorded step ran
    assert steps["num_prefill_seqs"].max() == 1 and (steps["num_prefill_seqs"] > 0).sum() >= len(prompts)
    assert steps["num_decode_seqs"].max() <= 2 and (steps["num_decode_seqs"] == 2).any()
    requests = s.engine.metrics.requests_frame()
    # page_size and prefill_lengths: one 10-token prompt alone, 6 new tokens: 16 tokens in 2 pages of 8; its prefill
    # padded to the 16-token bucket (what the executor's batch builder built)
    built: list[int] = []
    build = s.executor.builder.build
    s.executor.builder.build = lambda batch: (x := build(batch), built.append(len(x.token_ids)))[0]
    s.engine.metrics._steps.clear()
    s.generate([list(range(3, 13))], GREEDY)
    assert s.engine.metrics.steps_frame()["pages_used_max"].max() == 2
    assert built[0] == 16 and set(built) <= set(s.executor.builder.token_buckets)
    s.executor.builder.build = build
    # seed: the engine seed drives requests that carry none; the same seed repeats them, another changes them
    again = make().generate(prompts, sampled)
    other = make(seed=2).generate(prompts, sampled)
    assert [r.token_ids for r in again] == [r.token_ids for r in results]
    assert [r.token_ids for r in other] != [r.token_ids for r in results]
    # vsurge_name names request ids and the engine thread
    assert requests["request_id"].str.startswith("named-").all()
    s.start()
    try:
        assert any(t.name == "named-engine" for t in threading.enumerate())
    finally:
        s.stop()
    # max_prefill_length rejects a longer prompt
    with pytest.raises(ValueError, match="max_prefill_length=16"):
        s.submit(list(range(3, 20)), GREEDY)
    # hbm_utilization sizes the pool from device memory (capped by what the running set can use)
    plan = s.memory_plan
    assert plan.pages_fit == int((plan.device_bytes * 0.0005 - plan.weight_bytes) // plan.page_bytes)
    assert s.engine.allocator.num_pages == min(plan.pages_fit, plan.pages_useful)
    bigger = make(hbm_utilization=0.001)
    assert bigger.memory_plan.pages_fit > plan.pages_fit
    with pytest.raises(odrive.ConfigError, match="hbm_utilization"):
        odrive.vSurge.create_odriver(model=model, processor=processor, hbm_utilization=1e-12, page_size=8)
    with pytest.raises(odrive.ConfigError, match="largest prefill bucket"):
        odrive.vSurge.create_odriver(model=model, processor=processor, max_prefill_length=64, prefill_lengths=[16, 32])


def test_prompt_exactly_as_long_as_the_largest_bucket(surge, mp):
    model, _ = mp
    ids = list(range(3, 35))  # 32 tokens == max_prefill_length == largest bucket
    result = surge.generate([ids], GREEDY)[0]
    assert result.token_ids == dense_greedy_generate(model.params, model.config, ids, 6)


def test_n_samples_fan_out_with_distinct_reproducible_seeds(surge):
    params = SamplingParams(max_tokens=8, temperature=1.0, seed=11, n=3)
    first = [r.token_ids for r in surge.generate(["The engine", "Numbers such as"], params)]
    again = [r.token_ids for r in surge.generate(["The engine", "Numbers such as"], params)]
    assert len(first) == 6 and first == again
    assert len({tuple(t) for t in first[:3]}) > 1  # the three samples of one prompt differ
    single = surge.generate(["The engine"], SamplingParams(max_tokens=8, temperature=1.0, seed=12))[0].token_ids
    assert single == first[1]  # sample i is seeded seed + i
    with pytest.raises(ValueError, match="generate"):
        surge.submit("The engine", params)
    assert surge.num_free_pages == surge.num_usable_pages


def test_idle_and_drain_in_the_calling_thread_and_with_the_background_thread(surge, mp):
    assert surge.is_idle
    handles = [surge.submit(p, GREEDY) for p in ("The engine keeps a pool", "Pages")]
    assert not surge.is_idle and not any(h.done for h in handles)
    surge.drain()  # no background thread: steps here
    assert all(h.done for h in handles) and surge.is_idle
    surge.start()
    assert not surge.is_idle  # its thread drives the engine
    handle = surge.submit("Pages", GREEDY)
    surge.drain()  # waits for the thread
    assert handle.done and handle.result().token_ids == expected(mp, "Pages", len(handle.result().token_ids))
    surge.stop()
    assert surge.is_idle
