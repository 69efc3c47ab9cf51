"""Sim-vs-real error of one workload: per request (TTFT, TPOT, E2E) and aggregate (throughput, peak pages)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from odrive.core.metrics import summarize

REQUEST_METRICS = ("ttft", "tpot", "e2e")
AGGREGATES = ("request_throughput", "output_token_throughput", "peak_pages_used", "preemptions", "duration_s")


def median_run(runs: list[pd.DataFrame]) -> pd.DataFrame:
    """The per-request median of several real runs of one workload (request frames with ``index``): each
    request's TTFT, TPOT, E2E and finish time is the median over the runs; the rest is the first run's.

    One run of a shared machine carries its own noise (a slow second here, a preemption there); a simulator
    is deterministic, so it is judged against what the engine typically does for each request."""
    if not runs:
        raise ValueError("median_run needs at least one run")
    cols = [*REQUEST_METRICS, "first_token_time", "finish_time"]
    first = runs[0].set_index("index")
    if any(sorted(r["index"]) != sorted(first.index) for r in runs[1:]):
        raise ValueError("median_run: the runs served different requests")
    stacked = pd.concat([r.set_index("index")[cols] for r in runs])
    out = first.copy()
    out[cols] = stacked.groupby(level=0).median().reindex(first.index)
    return out.reset_index()


def per_request(real: pd.DataFrame, sim: pd.DataFrame) -> pd.DataFrame:
    """One row per workload request (``index``): each metric real, sim and relative error (sim / real - 1)."""
    keep = ["index", "num_prompt_tokens", "num_output_tokens", "arrival_time", *REQUEST_METRICS, "num_preemptions"]
    both = real[keep].merge(
        sim[keep], on=["index", "num_prompt_tokens"], suffixes=("_real", "_sim"), how="outer", validate="one_to_one"
    )
    for m in REQUEST_METRICS:
        both[f"{m}_err"] = both[f"{m}_sim"] / both[f"{m}_real"] - 1.0
    return both


def error_rows(
    real_requests: pd.DataFrame, sim_requests: pd.DataFrame, real_steps: pd.DataFrame, sim_steps: pd.DataFrame
) -> list[dict]:
    """Tidy rows ``metric, statistic, real, sim, error_pct``:

    - per-request metrics: ``median_abs`` / ``p90_abs`` of the per-request relative error, and the ``mean``
      and ``p90`` of each side's distribution with their relative difference;
    - aggregates from ``odrive.core.metrics.summarize`` of each run (peak pages: the engines' own step metrics).
    """
    pr = per_request(real_requests, sim_requests)
    rows: list[dict] = []
    for m in REQUEST_METRICS:
        err = pr[f"{m}_err"].dropna().to_numpy()
        a = 100 * np.abs(err)
        rows.append(_row(m, "median_abs", np.nan, np.nan, float(np.median(a)) if len(a) else np.nan))
        rows.append(_row(m, "p90_abs", np.nan, np.nan, float(np.percentile(a, 90)) if len(a) else np.nan))
        r, s = pr[f"{m}_real"].dropna(), pr[f"{m}_sim"].dropna()
        rows.append(_row(m, "mean", r.mean(), s.mean()))
        rows.append(_row(m, "p90", r.quantile(0.9), s.quantile(0.9)))
    sr, ss = summarize(real_requests, real_steps), summarize(sim_requests, sim_steps)
    for m in AGGREGATES:
        rows.append(_row(m, "value", float(sr.get(m, np.nan)), float(ss.get(m, np.nan))))
    return rows


def _row(metric: str, statistic: str, real: float, sim: float, error_pct: float | None = None) -> dict:
    if error_pct is None:
        error_pct = 100 * (sim / real - 1.0) if real and np.isfinite(real) else np.nan
    return {
        "metric": metric,
        "statistic": statistic,
        "real": float(real),
        "sim": float(sim),
        "error_pct": float(error_pct),
    }
