"""Metrics of one run beyond ``SimResult.summary``: time-weighted KV waste, concurrency, cache hits, SLOs."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from sim.simulator import SimResult

RENAMED = {"num_pages": "usable_pages"}  # summary keys that would shadow a SimConfig field in a sweep row


def _weighted_mean(values: pd.Series, weights: np.ndarray) -> float:
    total = weights.sum()
    return float(np.dot(values.to_numpy(dtype=float), weights) / total) if total > 0 else math.nan


def kv_metrics(steps: pd.DataFrame, page_size: int) -> dict[str, float]:
    """Duration-weighted KV-pool use over the steps that ran.

    - ``kv_waste``: allocated (reserved) slots holding no token, as a fraction of allocated slots.
    - ``kv_token_utilization``: slots holding a token, as a fraction of the whole pool.
    - ``kv_allocated_fraction``: allocated slots as a fraction of the whole pool.
    - ``max_running`` / ``mean_running``: peak and mean sequences holding KV state at once.
    """
    if steps is None or not len(steps):
        return dict.fromkeys(
            ("kv_waste", "kv_token_utilization", "kv_allocated_fraction", "max_running", "mean_running"), math.nan
        )
    w = steps["duration"].to_numpy(dtype=float)
    allocated = float(np.dot(steps["allocated_slots"].to_numpy(dtype=float), w))
    used = float(np.dot(steps["used_slots"].to_numpy(dtype=float), w))
    pool = float(np.dot((steps["pages_used"] + steps["pages_free"]).to_numpy(dtype=float) * page_size, w))
    return {
        "kv_waste": 1.0 - used / allocated if allocated > 0 else math.nan,
        "kv_token_utilization": used / pool if pool > 0 else math.nan,
        "kv_allocated_fraction": allocated / pool if pool > 0 else math.nan,
        "max_running": float(steps["num_running"].max()),
        "mean_running": _weighted_mean(steps["num_running"], w),
    }


def prefix_metrics(requests: pd.DataFrame) -> dict[str, float]:
    """``cached_token_fraction``: prompt tokens served from the prefix cache / all prompt tokens admitted."""
    done = requests[requests["status"] == "finished"]
    prompt = float(done["num_prompt_tokens"].sum())
    cached = float(done["num_cached_tokens"].sum()) if "num_cached_tokens" in done else 0.0
    return {"cached_token_fraction": cached / prompt if prompt > 0 else math.nan}


def slo_metrics(requests: pd.DataFrame, ttft_slo: float = 1.0, tpot_slo: float = 0.1) -> dict[str, float]:
    """Goodput: finished requests per second whose TTFT <= ``ttft_slo`` and TPOT <= ``tpot_slo`` (a one-token
    request has no TPOT and only needs the TTFT bound); ``slo_attainment`` is their share of all requests."""
    if not len(requests):
        return {"goodput": math.nan, "slo_attainment": math.nan}
    done = requests[requests["status"] == "finished"]
    ok = (done["ttft"] <= ttft_slo) & (done["tpot"].isna() | (done["tpot"] <= tpot_slo))
    span = float(done["finish_time"].max() - requests["arrival_time"].min()) if len(done) else math.nan
    return {
        "goodput": float(ok.sum()) / span if span and span > 0 else math.nan,
        "slo_attainment": float(ok.sum()) / len(requests),
    }


def standard_metrics(result: SimResult) -> dict[str, float]:
    """The summary plus KV, concurrency and prefix-cache metrics every sweep row carries."""
    row = {RENAMED.get(str(k), str(k)): float(v) for k, v in result.summary.items()}
    row.update(kv_metrics(result.steps, result.config.page_size))
    row.update(prefix_metrics(result.requests))
    return row


def slo_result_metrics(result: SimResult, ttft_slo: float = 1.0, tpot_slo: float = 0.1) -> dict[str, float]:
    """:func:`slo_metrics` of a run, for ``run_sweep(extra_metrics=functools.partial(slo_result_metrics, ...))``."""
    return slo_metrics(result.requests, ttft_slo, tpot_slo)
