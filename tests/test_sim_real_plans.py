"""Closed workloads (every request at t = 0) on the real engine and in the simulator, for every policy: the per-step
plans (who runs how many tokens, who is preempted or swapped), pages used, and every request's preemptions and
prefix-cache hits must be identical (``odrive.profiling.closed``, as ``experiments.validate_sim`` checks them).

A small random model (compiles fast; plans do not depend on step times) and a pool small enough to preempt; the
engines share one model, so each shape compiles once for all policies.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from experiments.validate_sim import TINY, UNPINNED_PROFILE, ValidationConfig, family_workload
from odrive.profiling.closed import ClosedComparison, compare_closed
from sim.latency.calibrated import CalibratedLatencyModel

BASE = replace(
    TINY, profile=str(UNPINNED_PROFILE), max_prefill_length=128, max_length=256, max_concurrent_decodes=6,
    prompt=(8, 64), output=(8, 40), long_output=(24, 64), short_output=(4, 12), user=(8, 20), system_prompt=24,
    turns=2, closed_requests=12, closed_num_pages=24, swap_space_pages=64,
)  # fmt: skip
SHARED = {"closed_num_pages": 16}  # conversations share their prefixes: a smaller pool still preempts
POLICIES: dict[str, tuple[dict, str]] = {  # name -> (ValidationConfig fields, workload family)
    "fcfs": ({}, "tight_pool"),
    "fcfs-swap": ({"preemption_mode": "swap"}, "tight_pool"),
    "sarathi": ({"scheduler": "sarathi", "chunk_size": 16}, "tight_pool"),
    "sarathi-swap": ({"scheduler": "sarathi", "chunk_size": 16, "preemption_mode": "swap"}, "tight_pool"),
    "decode-priority": ({"scheduler": "decode-priority"}, "tight_pool"),
    "odriver": ({"scheduler": "odriver"}, "tight_pool"),
    "priority": ({"scheduler": "priority", "output": (24, 64)}, "priority"),
    "sjf-oracle": ({"scheduler": "sjf", "scheduler_kwargs": (("predictor", "oracle"),)}, "tight_pool"),
    "sjf-bucket-mean": ({"scheduler": "sjf", "scheduler_kwargs": (("predictor", "bucket-mean"),)}, "tight_pool"),
    "cache-aware+prefix-cache": ({"scheduler": "cache-aware", "allocator": "prefix-cache", **SHARED}, "multi_turn"),
    "fcfs+prefix-cache": ({"allocator": "prefix-cache", **SHARED}, "multi_turn"),
    "fcfs+prefix-cache-swap": ({"allocator": "prefix-cache", "preemption_mode": "swap", **SHARED}, "multi_turn"),
    "fcfs+free-list-lifo": ({"allocator": "free-list-lifo"}, "tight_pool"),
    "fcfs+buddy": ({"allocator": "buddy"}, "tight_pool"),
    "fcfs+contiguous": ({"allocator": "contiguous", "allocator_kwargs": (("reservation", "pow2"),)}, "tight_pool"),
}


@pytest.fixture(scope="module")
def engine_model():
    from odrive.models.config import LlamaConfig
    from odrive.profiling.profiler import tiny_bench_model

    config = LlamaConfig(vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=32)  # fmt: skip
    return tiny_bench_model("float32", config=config)


@pytest.fixture(scope="module")
def latency_model() -> CalibratedLatencyModel:
    return CalibratedLatencyModel(UNPINNED_PROFILE, page_size=BASE.page_size)


def run_closed(cfg: ValidationConfig, family: str, engine_model, latency_model) -> ClosedComparison:  # noqa: ANN001
    from odrive.vsurge.driver import vSurge

    surge = vSurge.create_odriver(model=engine_model, **cfg.engine_kwargs(cfg.closed_num_pages))
    workload = family_workload(cfg, family, cfg.closed_requests, seed=3)
    return compare_closed(surge, cfg.sim_config(cfg.closed_num_pages), workload, latency_model,
                          max_length=cfg.max_length)  # fmt: skip


@pytest.mark.parametrize("name", list(POLICIES))
def test_the_simulator_decides_every_step_as_the_real_engine(name: str, engine_model, latency_model) -> None:
    fields, family = POLICIES[name]
    cfg = replace(BASE, **fields)
    c = run_closed(cfg, family, engine_model, latency_model)
    assert c.identical, c.describe()
    real = c.real.requests
    assert len(real) == cfg.closed_requests and (real["status"] == "finished").all()
    if cfg.allocator != "contiguous":  # which reserves at admission: it queues instead of preempting
        assert real["num_preemptions"].sum() > 0, "the pool must be small enough that preemptions are compared"
    if cfg.preemption_mode == "swap":
        assert c.swaps["pages_out"][0] > 0 and c.swaps["pages_in"][0] > 0, c.swaps
    if cfg.allocator == "prefix-cache":
        assert real["num_cached_tokens"].sum() > 0 and c.prefix["hit_tokens"][0] > 0, c.prefix
    if cfg.chunk_size:  # prompts longer than a chunk were chunked
        assert (real["num_prompt_tokens"] > cfg.chunk_size).any()
    if family == "priority":
        assert c.real.plans["preempted"].astype(str).str.len().gt(0).any()


def test_a_difference_in_any_one_request_or_step_is_reported(engine_model, latency_model) -> None:
    """The comparison can fail: a simulator with a pool of one page more decides otherwise somewhere."""
    from odrive.vsurge.driver import vSurge

    cfg = replace(BASE, allocator="prefix-cache", **SHARED)
    surge = vSurge.create_odriver(model=engine_model, **cfg.engine_kwargs(cfg.closed_num_pages))
    workload = family_workload(cfg, "multi_turn", cfg.closed_requests, seed=3)
    c = compare_closed(surge, cfg.sim_config(cfg.closed_num_pages + 1), workload, latency_model,
                       max_length=cfg.max_length)  # fmt: skip
    assert not c.identical and not c.plans_diff.empty
    assert "steps differ" in c.describe()
