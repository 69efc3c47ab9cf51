"""Per-request and per-step metrics, as pandas DataFrames, and inter-token latencies as a bounded histogram."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from mypy_extensions import mypyc_attr

from odrive.allocators.base import AllocatorStats
from odrive.core.latency_histogram import LatencyHistogram
from odrive.core.request import Request

REQUEST_COLUMNS = [
    "request_id", "status", "finish_reason", "arrival_time", "first_scheduled_time", "first_token_time",
    "finish_time", "num_prompt_tokens", "num_output_tokens", "num_preemptions", "num_cached_tokens", "message",
]  # fmt: skip
STEP_COLUMNS = [
    "time", "duration", "num_steps", "num_prefill_seqs", "num_prefill_tokens", "num_decode_seqs",
    "num_preempted", "num_finished", "pages_used", "pages_used_max", "pages_free", "allocated_slots",
    "used_slots", "fragmentation", "num_waiting", "num_running",
]  # fmt: skip


@dataclass(frozen=True)
class PageUsage:
    """KV pool use while a step (or a fast-forwarded run of steps) executes, duration-weighted over the
    run: mean pages in use, the peak, mean allocated/used slots and mean internal fragmentation."""

    num_pages: int
    pages_used: float
    pages_used_max: int
    allocated_slots: float
    used_slots: float
    fragmentation: float

    @classmethod
    def of(cls, stats: AllocatorStats) -> PageUsage:
        return cls(stats.num_pages, stats.used_pages, stats.used_pages, stats.allocated_slots, stats.used_slots,
                   stats.internal_fragmentation)


@mypyc_attr(allow_interpreted_subclasses=True)  # compiled by odrive.accel; users subclass it
class MetricsRecorder:
    """Collects rows as plain tuples (cheap in the hot loop); builds DataFrames on demand. Every gap between two
    output tokens of a request (its inter-token latency, ITL) goes to ``itl``, a :class:`LatencyHistogram`
    (bounded memory; pass one to share it, e.g. between a cluster's replicas)."""

    def __init__(self, record_steps: bool = True, itl: LatencyHistogram | None = None) -> None:
        self.record_steps = record_steps
        self._requests: list[tuple] = []
        self._steps: list[tuple] = []
        self.itl = itl if itl is not None else LatencyHistogram()

    def on_request_done(self, r: Request) -> None:
        self._requests.append((
            r.request_id, r.status.value, r.finish_reason.value if r.finish_reason else None, r.arrival_time,
            r.first_scheduled_time, r.first_token_time, r.finish_time, r.num_prompt_tokens,
            r.num_output_tokens, r.num_preemptions, r.num_cached_tokens, r.status_message,
        ))  # fmt: skip

    def on_step(
        self, time: float, duration: float, num_steps: int, num_prefill_seqs: int, num_prefill_tokens: int,
        num_decode_seqs: int, num_preempted: int, num_finished: int, usage: PageUsage,
        num_waiting: int, num_running: int,
    ) -> None:  # fmt: skip
        if self.record_steps:
            self._steps.append((
                time, duration, num_steps, num_prefill_seqs, num_prefill_tokens, num_decode_seqs,
                num_preempted, num_finished, usage.pages_used, usage.pages_used_max,
                usage.num_pages - usage.pages_used, usage.allocated_slots, usage.used_slots, usage.fragmentation,
                num_waiting, num_running,
            ))  # fmt: skip

    def on_token_gap(self, gap: float, count: int = 1) -> None:
        """``count`` requests each produced an output token ``gap`` seconds after their previous one."""
        self.itl.add(gap, count)

    def on_run_gaps(self, ends: Sequence[float] | np.ndarray, num_steps: int, ran: list[int]) -> None:
        """The gaps inside a fast-forwarded decode run: step ``j >= 1`` (ending at ``ends[j]``) gave a token,
        ``ends[j] - ends[j - 1]`` after the last, to every request that ran more than ``j`` steps (``ran``: steps
        per request). The first step's gaps are the caller's (they depend on each request's past)."""
        self.itl.add_run(ends, num_steps, ran)

    @property
    def num_done(self) -> int:
        return len(self._requests)

    def requests_frame(self) -> pd.DataFrame:
        """One row per finished/aborted/rejected request, with TTFT, TPOT, E2E and queueing delay."""
        df = pd.DataFrame(self._requests, columns=REQUEST_COLUMNS)
        # None (never scheduled / no token) must read as NaN even when a column holds nothing else.
        times = ["arrival_time", "first_scheduled_time", "first_token_time", "finish_time"]
        df[times] = df[times].astype("float64")
        return with_latencies(df)

    def steps_frame(self) -> pd.DataFrame:
        """One row per engine step (a fast-forwarded decode run is one row with ``num_steps`` > 1)."""
        df = pd.DataFrame(self._steps, columns=STEP_COLUMNS)
        df["utilization"] = df["pages_used"] / (df["pages_used"] + df["pages_free"])
        return df


def with_latencies(df: pd.DataFrame) -> pd.DataFrame:
    """Add each request's TTFT, E2E, TPOT (the time between its first and last token over the tokens after the
    first; NaN for one token) and queueing delay (when ``first_scheduled_time`` is known), from its time columns."""
    df["ttft"] = df["first_token_time"] - df["arrival_time"]
    df["e2e"] = df["finish_time"] - df["arrival_time"]
    if "first_scheduled_time" in df:
        df["queue_time"] = df["first_scheduled_time"] - df["arrival_time"]
    decode_tokens = (df["num_output_tokens"] - 1).where(df["num_output_tokens"] > 1)
    df["tpot"] = (df["finish_time"] - df["first_token_time"]) / decode_tokens
    return df


def summarize(requests: pd.DataFrame, steps: pd.DataFrame | None = None) -> pd.Series:
    """Aggregate throughput and latency percentiles of a run."""
    done = requests[requests["status"] == "finished"]
    start = requests["arrival_time"].min() if len(requests) else 0.0
    end = done["finish_time"].max() if len(done) else start
    span = (end - start) if len(done) else math.nan
    out: dict[str, float] = {
        "requests": float(len(requests)),
        "finished": float(len(done)),
        "rejected": float((requests["finish_reason"] == "rejected").sum()),
        "aborted": float((requests["finish_reason"] == "aborted").sum()),
        "duration_s": float(span),
        "request_throughput": len(done) / span if span and span > 0 else math.nan,
        "output_token_throughput": done["num_output_tokens"].sum() / span if span and span > 0 else math.nan,
        "preemptions": float(requests["num_preemptions"].sum()),
        # Prompt tokens served from the prefix cache instead of being computed (0 without a caching allocator).
        "prefix_cache_hit_rate": float(done["num_cached_tokens"].sum() / max(1, done["num_prompt_tokens"].sum())),
    }
    for col in ("ttft", "tpot", "e2e"):
        vals = done[col].dropna().to_numpy()
        for q in (50, 90, 99):
            out[f"{col}_p{q}"] = float(np.percentile(vals, q)) if len(vals) else math.nan
        out[f"{col}_mean"] = float(vals.mean()) if len(vals) else math.nan
    if steps is not None and len(steps):
        w = steps["duration"].to_numpy()
        out["mean_page_utilization"] = float(np.average(steps["utilization"], weights=w)) if w.sum() else math.nan
        out["peak_pages_used"] = float(steps["pages_used_max"].max())
        out["mean_fragmentation"] = float(np.average(steps["fragmentation"], weights=w)) if w.sum() else math.nan
        out["num_steps"] = float(steps["num_steps"].sum())
    return pd.Series(out)
