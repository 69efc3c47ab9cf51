"""The simulator on a real trace slice, its page count, its summary, and configs that cannot work."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from odrive.core.metrics import REQUEST_COLUMNS, STEP_COLUMNS, MetricsRecorder
from odrive.errors import ConfigError
from sim.config import SimConfig
from sim.hardware import get_accelerator
from sim.model_spec import get_model_spec, num_kv_pages
from sim.simulator import SimResult, simulate
from sim.workloads import Workload, load_trace

TRACE = Path(__file__).resolve().parents[1] / "data" / "traces" / "azure_conv_2023.csv"
NUM_REQUESTS = 300


@pytest.fixture(scope="module")
def trace_slice() -> Workload:
    return load_trace(TRACE, max_requests=NUM_REQUESTS)


@pytest.fixture(scope="module")
def trace_run(trace_slice: Workload) -> SimResult:
    return simulate(SimConfig(accelerator="h100-80gb", model="llama-2-7b", check_invariants=True), trace_slice)


def test_trace_run_tables_and_summary(trace_slice: Workload, trace_run: SimResult) -> None:
    req, steps, summary = trace_run.requests, trace_run.steps, trace_run.summary
    # Workload order (ids r0, r1, ...); the frame is sorted by arrival, which may tie.
    req = req.sort_values("request_id", key=lambda s: s.str[1:].astype(int)).reset_index(drop=True)
    assert len(trace_slice) == NUM_REQUESTS
    assert list(req.columns[: len(REQUEST_COLUMNS)]) == REQUEST_COLUMNS
    assert {"ttft", "tpot", "e2e", "queue_time"} <= set(req.columns)
    assert list(steps.columns[: len(STEP_COLUMNS)]) == STEP_COLUMNS
    assert len(req) == NUM_REQUESTS and req["request_id"].is_unique
    # Rows sorted by arrival; arrivals are the trace's.
    np.testing.assert_allclose(req["arrival_time"].to_numpy(), trace_slice.arrival_times)
    # The pool holds every request of this slice, so all finish with their trace output length.
    assert (req["status"] == "finished").all()
    np.testing.assert_array_equal(req["num_output_tokens"].to_numpy(), trace_slice.output_lens)
    np.testing.assert_array_equal(req["num_prompt_tokens"].to_numpy(), trace_slice.prompt_lens)
    assert (req["ttft"] > 0).all()
    assert (req.loc[req["num_output_tokens"] > 1, "tpot"] > 0).all()
    assert req.loc[req["num_output_tokens"] == 1, "tpot"].isna().all()
    assert (req["e2e"] >= req["ttft"]).all() and (req["queue_time"] >= 0).all()

    expected_keys = {
        "requests", "finished", "rejected", "aborted", "duration_s", "request_throughput",
        "output_token_throughput", "preemptions", "num_pages", "mean_page_utilization", "peak_pages_used",
        "mean_fragmentation", "num_steps",
    } | {f"{m}_{q}" for m in ("ttft", "tpot", "e2e") for q in ("p50", "p90", "p99", "mean")}  # fmt: skip
    assert expected_keys <= set(summary.index)
    assert summary["requests"] == summary["finished"] == NUM_REQUESTS
    assert summary["rejected"] == summary["aborted"] == 0
    for key in ("ttft_p50", "ttft_mean", "tpot_p50", "tpot_mean", "e2e_p50", "request_throughput",
                "output_token_throughput", "duration_s"):  # fmt: skip
        assert math.isfinite(summary[key]) and summary[key] > 0, key
    assert summary["ttft_p50"] <= summary["ttft_p90"] <= summary["ttft_p99"]
    assert summary["tpot_p50"] <= summary["tpot_p90"] <= summary["tpot_p99"]
    # Throughput is what the tables say it is.
    span = req["finish_time"].max() - req["arrival_time"].min()
    assert summary["duration_s"] == pytest.approx(span)
    assert summary["output_token_throughput"] == pytest.approx(trace_slice.output_lens.sum() / span)
    assert summary["request_throughput"] == pytest.approx(NUM_REQUESTS / span)
    # Sanity for a 7B model on an H100: a decode step is milliseconds, not micro- or whole seconds.
    assert 1e-3 < summary["tpot_p50"] < 0.1
    assert summary["duration_s"] >= trace_slice.duration
    assert 0 < summary["mean_page_utilization"] <= 1 and 0 <= summary["mean_fragmentation"] < 1
    assert summary["num_steps"] == steps["num_steps"].sum() >= trace_slice.output_lens.max()
    assert trace_run.free_pages_at_end == trace_run.num_pages - 1


def test_page_count_comes_from_the_model(trace_run: SimResult) -> None:
    expected = num_kv_pages(get_accelerator("h100-80gb"), get_model_spec("llama-2-7b"), 16, 0.9)
    assert trace_run.num_pages == expected
    assert trace_run.summary["num_pages"] == expected - 1  # page 0 is the null page
    assert np.allclose(trace_run.steps["pages_used"] + trace_run.steps["pages_free"], expected - 1)
    # The formula, by hand: (80 GiB x 0.9 - weights) / (16 tokens x 2 x 32 layers x 32 heads x 128 x 2 bytes).
    model = get_model_spec("llama-2-7b")
    per_page = 16 * 2 * 32 * 32 * 128 * 2
    assert expected == math.floor((80 * 2**30 * 0.9 - model.weight_bytes) / per_page)


def test_more_memory_more_pages(trace_slice: Workload) -> None:
    small = simulate(SimConfig(hbm_utilization=0.5), trace_slice.slice(5))
    large = simulate(SimConfig(hbm_utilization=0.95), trace_slice.slice(5))
    assert small.num_pages < large.num_pages


def test_tight_pool_preempts_and_rejects_but_loses_nothing(trace_slice: Workload) -> None:
    wl = trace_slice.slice(120)
    config = SimConfig(num_pages=200, max_prefill_length=2048, check_invariants=True)
    run = simulate(config, wl)
    req = run.requests
    assert len(req) == len(wl)
    too_long = wl.prompt_lens > 2048
    too_big = -(-(wl.prompt_lens + wl.output_lens) // 16) > 199
    rejected = req.sort_values("request_id", key=lambda s: s.str[1:].astype(int))["finish_reason"] == "rejected"
    np.testing.assert_array_equal(rejected.to_numpy(), too_long | too_big)
    assert run.summary["rejected"] == (too_long | too_big).sum() > 0
    assert run.summary["preemptions"] > 0
    assert run.summary["finished"] + run.summary["rejected"] == len(wl)
    assert run.steps["pages_used"].max() <= 199


def test_weights_that_do_not_fit_give_a_clear_error(trace_slice: Workload) -> None:
    with pytest.raises(ValueError, match=r"no KV pages fit for 'llama-2-7b'.*weights need \d+ bytes"):
        simulate(SimConfig(hbm_utilization=0.1), trace_slice.slice(3))
    with pytest.raises(ValueError, match=r"hbm_utilization must be in \(0, 1\]"):
        simulate(SimConfig(hbm_utilization=1.5), trace_slice.slice(3))
    with pytest.raises(ValueError, match="no KV pages fit"):
        simulate(SimConfig(accelerator="tpu-v5e", model="llama-3-70b"), trace_slice.slice(3))


def test_a_pool_of_one_page_is_a_config_error(trace_slice: Workload) -> None:
    with pytest.raises(ConfigError, match="at least 2 pages"):
        simulate(SimConfig(num_pages=1), trace_slice.slice(3))


def test_unknown_names_list_the_known_ones(trace_slice: Workload) -> None:
    with pytest.raises(KeyError, match="h100-80gb"):
        simulate(SimConfig(accelerator="h900"), trace_slice.slice(3))
    with pytest.raises(KeyError, match="fcfs"):
        simulate(SimConfig(scheduler="nope"), trace_slice.slice(3))


def test_all_rejected_run_has_numeric_time_columns() -> None:
    # Regression: with no request ever scheduled, the time columns were object dtype (all None),
    # so ttft / queue_time / tpot were not numbers.
    wl = Workload(np.array([0.0, 1.0]), np.array([100, 200]), np.array([5, 5]))
    run = simulate(SimConfig(num_pages=64, max_prefill_length=50), wl)
    assert (run.requests["finish_reason"] == "rejected").all()
    for col in ("arrival_time", "first_scheduled_time", "first_token_time", "finish_time", "ttft", "queue_time"):
        assert pd.api.types.is_float_dtype(run.requests[col]), col
    assert run.requests["ttft"].isna().all()
    assert run.summary["finished"] == 0 and math.isnan(run.summary["ttft_p50"])
    assert len(run.steps) == 0


def test_empty_recorder_frames() -> None:
    m = MetricsRecorder()
    assert len(m.requests_frame()) == 0 and len(m.steps_frame()) == 0
    assert pd.api.types.is_float_dtype(m.requests_frame()["ttft"])
