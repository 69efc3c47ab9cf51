"""Sliding-window page release: pages wholly behind a request's attention window go back to the pool as it passes.

The shared ``Engine`` asks the allocator after every step (``PageAllocator.release_before``) when the scheduler
config carries the model's window; the free-list allocators free those pages and leave the null page in their
table entries, which every paged kernel masks (``tests/test_kernels_*``: released entries are never read).
"""

from __future__ import annotations

import dataclasses
import math

import pytest
from checkpoints import SHORT_PROMPTS, build_tiny_checkpoint
from hf_reference import transformers_greedy

import odrive
from odrive.allocators import NULL_PAGE, make_allocator
from odrive.core.request import Request
from odrive.core.sampling_params import SamplingParams
from sim.config import SimConfig
from sim.model_spec import get_model_spec, register_model_spec
from sim.simulator import build_engine, simulate
from sim.workloads.request import Workload

WINDOW, PAGE = 8, 4
PROMPTS = list(SHORT_PROMPTS)  # 15 to 26 tokens
NEW_TOKENS = 12
LIMITS = dict(max_prefill_length=32, prefill_lengths=(16, 32), max_concurrent_prefill=2, max_concurrent_decodes=2)


@pytest.mark.parametrize("name", ["free-list", "free-list-lifo"])
def test_free_list_releases_whole_pages_behind_the_window(name):
    alloc = make_allocator(name, num_pages=9, page_size=4)
    assert alloc.allocate("a", 10) and alloc.allocate("b", 5)
    a_pages = alloc.page_table("a")[:2]
    assert alloc.release_before("a", 9) == 2  # positions 0-7: two whole pages; page 3 still holds position 8
    assert alloc.page_table("a")[:2] == [NULL_PAGE, NULL_PAGE] and alloc.num_released("a") == 2
    assert set(a_pages) <= set(alloc.free_page_ids()) and alloc.num_free_pages == 5
    assert alloc.release_before("a", 9) == 0 and alloc.release_before("a", 3) == 0  # nothing more to free
    stats = alloc.stats()
    assert (stats.used_pages, stats.used_slots, stats.allocated_slots) == (3, 2 + 5, 12)
    alloc.check_invariants()
    assert alloc.allocate("a", 14) and len(alloc.page_table("a")) == 4  # grows at the end, table keeps its length
    assert alloc.num_tokens("a") == 14 and not alloc.can_allocate("c", 6 * 4)
    assert alloc.release_before("a", 100) == 2  # everything the table holds
    alloc.check_invariants()
    alloc.free("a")
    alloc.free("b")
    assert alloc.num_free_pages == alloc.num_usable_pages and alloc.stats().used_slots == 0
    alloc.check_invariants()


@pytest.mark.parametrize("name", ["buddy", "contiguous", "prefix-cache"])
def test_other_allocators_keep_their_pages(name):
    alloc = make_allocator(name, num_pages=17, page_size=4)
    assert alloc.allocate("a", 12)
    table = list(alloc.page_table("a"))
    assert alloc.release_before("a", 12) == 0 and alloc.page_table("a") == table and alloc.num_released("a") == 0


def _windowed_spec(window: int | None) -> str:
    name = f"tiny-bench-window-{window}"
    register_model_spec(dataclasses.replace(get_model_spec("tiny-bench"), name=name, sliding_window=window))
    return name


def _workload(n: int = 40) -> Workload:
    prompts = [12 + 4 * (i % 5) for i in range(n)]  # 12 to 28 tokens
    return Workload(arrival_times=[0.05 * i for i in range(n)], prompt_lens=prompts, output_lens=[24] * n)


def test_simulator_releases_pages_and_keeps_every_time(tmp_path):
    """With a pool large enough that nobody waits for pages, the window changes only the pages held."""
    runs = {}
    for window in (None, WINDOW):
        config = SimConfig(model=_windowed_spec(window), accelerator="cpu-2core", page_size=PAGE, num_pages=2000,
                           check_invariants=True, **LIMITS)  # fmt: skip
        runs[window] = simulate(config, _workload())
        assert config.scheduler_config().sliding_window == window
    plain, windowed = runs[None].requests, runs[WINDOW].requests
    assert (windowed["status"] == "finished").all()
    for column in ("first_token_time", "finish_time", "num_output_tokens"):
        assert windowed[column].tolist() == pytest.approx(plain[column].tolist(), rel=1e-12), column
    held = runs[WINDOW].steps["pages_used_max"].max()
    assert held < runs[None].steps["pages_used_max"].max()
    # Two running requests, each holding at most its window's pages, a partly filled one and the step's new tokens.
    assert held <= 2 * (math.ceil((WINDOW + LIMITS["max_prefill_length"]) / PAGE) + 1)


def test_window_lets_a_small_pool_run_more_at_once():
    """40 requests at once with 60 output tokens each, 29 pages of 4: without the window requests outgrow the pool
    and are preempted over and over; with it each holds a few pages, all 8 decode slots run, nobody is preempted."""
    config = dict(accelerator="cpu-2core", page_size=PAGE, num_pages=30, check_invariants=True,
                  max_prefill_length=48, max_concurrent_prefill=4, max_concurrent_decodes=8)  # fmt: skip
    workload = Workload(arrival_times=[0.0] * 40, prompt_lens=[12 + 4 * (i % 5) for i in range(40)],
                        output_lens=[60] * 40)  # fmt: skip
    plain = simulate(SimConfig(model=_windowed_spec(None), **config), workload)
    windowed = simulate(SimConfig(model=_windowed_spec(WINDOW), **config), workload)
    assert plain.requests["num_preemptions"].sum() > 50 and windowed.requests["num_preemptions"].sum() == 0
    assert plain.steps["num_running"].max() < windowed.steps["num_running"].max() == 8
    assert (windowed.requests["status"] == "finished").all()
    assert windowed.requests["finish_time"].max() < plain.requests["finish_time"].max() / 2


@pytest.fixture(scope="module")
def mistral(tmp_path_factory):
    path = build_tiny_checkpoint(tmp_path_factory.mktemp("mistral"), model_type="mistral", sliding_window=WINDOW)
    return path, odrive.load_model(path), odrive.load_processor(path)


def test_real_engine_output_unchanged_and_pages_released(mistral):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    path, model, processor = mistral
    surge = odrive.vSurge.create_odriver(
        model=model, processor=processor, page_size=PAGE, num_pages=40, seed=0, vsurge_name="swa",
        check_invariants=True, **{k: v for k, v in LIMITS.items() if k != "prefill_lengths"},
        prefill_lengths=list(LIMITS["prefill_lengths"]),
    )  # fmt: skip
    assert surge.engine.scheduler.config.sliding_window == WINDOW
    released: list[int] = []
    surge.engine.outcome_listeners.append(
        lambda _: released.append(sum(surge.engine.allocator.num_released(r) for r in surge.engine.requests))
    )
    results = surge.generate(PROMPTS, odrive.SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0))
    prompt_ids = [processor.encode(p) for p in PROMPTS]
    expected = transformers_greedy(path, prompt_ids, NEW_TOKENS, list(processor.eos_token_ids))
    assert [r.token_ids for r in results] == expected
    assert max(released) > 0
    assert surge.num_free_pages == surge.num_usable_pages


def test_simulator_and_real_engine_free_alike(mistral):
    """Same requests at t=0, same scheduler, allocator and pool: the same plans and the same pages held, step by
    step (both drive the shared Engine; only the executor differs)."""
    path, model, processor = mistral
    prompt_lens = [len(processor.encode(p)) for p in PROMPTS]
    params = SamplingParams(max_tokens=NEW_TOKENS, ignore_eos=True)
    surge = odrive.vSurge.create_odriver(
        model=model, processor=processor, page_size=PAGE, num_pages=12, seed=0, check_invariants=True,
        **{k: v for k, v in LIMITS.items() if k != "prefill_lengths"}, prefill_lengths=list(LIMITS["prefill_lengths"]),
    )  # fmt: skip
    surge.generate(PROMPTS, params)
    sim = build_engine(SimConfig(model=str(path), accelerator="cpu-2core", page_size=PAGE, num_pages=12,
                                 check_invariants=True, **LIMITS))  # fmt: skip
    for i, n in enumerate(prompt_lens):
        assert sim.add_request(Request(f"r{i}", n, params), now=0.0)
    now = 0.0
    while sim.has_unfinished:
        now = sim.step(now).end
    columns = ["num_prefill_seqs", "num_prefill_tokens", "num_decode_seqs", "num_preempted", "num_finished",
               "pages_used"]  # fmt: skip
    real, simulated = surge.engine.metrics.steps_frame()[columns], sim.metrics.steps_frame()[columns]
    assert real.to_dict("records") == simulated.to_dict("records")
    # Two requests at full context would need more pages than the pool has; behind the window they fit.
    full_context = 2 * math.ceil((max(prompt_lens) + NEW_TOKENS) / PAGE)
    assert real["pages_used"].max() <= surge.num_usable_pages < full_context
    assert sim.allocator.num_free_pages == sim.allocator.num_usable_pages == surge.num_usable_pages
