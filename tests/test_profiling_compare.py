"""Sim-vs-real comparison helpers: per-request errors and the per-request median of several real runs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from odrive.profiling.compare import error_rows, median_run, per_request


def _run(e2e: list[float], order: list[int] | None = None) -> pd.DataFrame:
    n = len(e2e)
    idx = order or list(range(n))
    arrival = np.arange(n, dtype=float)
    frame = pd.DataFrame({
        "index": range(n), "request_id": [f"r{i}" for i in range(n)], "status": "finished", "finish_reason": "length",
        "num_prompt_tokens": 10, "num_output_tokens": 5, "num_cached_tokens": 0, "num_preemptions": 0,
        "arrival_time": arrival, "ttft": [x / 4 for x in e2e], "tpot": [x / 8 for x in e2e], "e2e": e2e,
        "first_token_time": arrival + [x / 4 for x in e2e], "finish_time": arrival + e2e,
    })  # fmt: skip
    return frame.iloc[idx].reset_index(drop=True)


def test_median_run_takes_each_requests_median_whatever_the_row_order() -> None:
    runs = [_run([1.0, 2.0, 3.0]), _run([3.0, 2.2, 1.0], order=[2, 0, 1]), _run([2.0, 9.0, 2.0])]
    med = median_run(runs).set_index("index")
    assert med["e2e"].tolist() == [2.0, 2.2, 2.0]
    assert med["finish_time"].tolist() == [2.0, 3.2, 4.0]
    assert med["ttft"].tolist() == [0.5, 0.55, 0.5]
    assert med["num_prompt_tokens"].tolist() == [10, 10, 10]


def test_median_run_of_one_run_is_that_run_and_the_errors_against_it_are_zero() -> None:
    run = _run([1.0, 2.0, 4.0])
    med = median_run([run])
    pd.testing.assert_frame_equal(med[run.columns], run)
    rows = {(r["metric"], r["statistic"]): r["error_pct"] for r in error_rows(med, run, pd.DataFrame(), pd.DataFrame())}
    assert rows[("e2e", "median_abs")] == 0.0
    assert rows[("request_throughput", "value")] == pytest.approx(0.0)
    assert per_request(med, run)["e2e_err"].abs().max() == 0.0


def test_median_run_refuses_runs_of_different_workloads() -> None:
    with pytest.raises(ValueError, match="different requests"):
        median_run([_run([1.0, 2.0]), _run([1.0, 2.0, 3.0])])
    with pytest.raises(ValueError, match="at least one"):
        median_run([])
