"""Per-replica metrics that stream rows to shared on-disk tables instead of keeping them."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from odrive.core.latency_histogram import LatencyHistogram
from odrive.core.metrics import MetricsRecorder, PageUsage
from odrive.core.request import Request
from sim.cluster.table_sink import TableSink

REQUEST_DTYPES = {
    "replica": "int32", "request_id": "string", "status": "string", "finish_reason": "string",
    "message": "string", "arrival_time": "float64", "first_scheduled_time": "float64",
    "first_token_time": "float64", "finish_time": "float64",
}  # fmt: skip


class RowBuffer:
    """Rows from every replica, each prefixed with its replica index; flushed to a sink in chunks.

    Each chunk of rows (without the replica column) becomes the DataFrame a :class:`MetricsRecorder` would build,
    so derived columns (TTFT, TPOT, ...) use the core formulas. Request rows may end in ``extra_columns`` values.
    """

    def __init__(self, sink: TableSink, kind: str, chunk_rows: int, extra_columns: tuple[str, ...] = ()) -> None:
        if kind not in ("requests", "steps"):
            raise ValueError(f"kind must be 'requests' or 'steps', got {kind!r}")
        self.sink = sink
        self.kind = kind
        self.chunk_rows = chunk_rows
        self.extra_columns = extra_columns
        self.rows: list[tuple] = []
        self.on_flush: Callable[[int], object] | None = None  # called with the number of rows written

    def append(self, row: tuple) -> None:
        self.rows.append(row)
        if len(self.rows) >= self.chunk_rows:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        replicas = [r[0] for r in self.rows]
        scratch = MetricsRecorder()
        extra = len(self.extra_columns)
        body = [r[1 : len(r) - extra] for r in self.rows]
        if self.kind == "requests":
            scratch._requests = body
            frame = scratch.requests_frame()
            for j, name in enumerate(self.extra_columns):
                frame[name] = [r[len(r) - extra + j] for r in self.rows]
        else:
            scratch._steps = body
            frame = scratch.steps_frame()
        frame.insert(0, "replica", replicas)
        self.sink.write(frame)
        self.rows = []
        if self.on_flush is not None:
            self.on_flush(len(frame))


@dataclass
class StepStats:
    """Duration-weighted KV-pool statistics over a replica's steps (what ``summarize`` takes from the
    steps table), accumulated online by :meth:`StreamingRecorder.on_step` so no step rows need to be kept."""

    weight: float = 0.0
    utilization: float = 0.0
    fragmentation: float = 0.0
    peak_pages_used: int = 0
    num_steps: int = 0

    def merge(self, other: StepStats) -> None:
        self.weight += other.weight
        self.utilization += other.utilization
        self.fragmentation += other.fragmentation
        self.peak_pages_used = max(self.peak_pages_used, other.peak_pages_used)
        self.num_steps += other.num_steps

    def summary(self) -> dict[str, float]:
        w = self.weight
        return {
            "mean_page_utilization": self.utilization / w if w else math.nan,
            "peak_pages_used": float(self.peak_pages_used),
            "mean_fragmentation": self.fragmentation / w if w else math.nan,
            "num_steps": float(self.num_steps),
        }


class StreamingRecorder(MetricsRecorder):
    """A replica's recorder: request (and, if asked, step) rows go to shared buffers tagged with the
    replica index; only counters and online step statistics stay in memory (and inter-token latencies, in
    ``itl``: pass the cluster's one histogram)."""

    def __init__(
        self, replica: int, requests: RowBuffer, steps: RowBuffer | None = None, itl: LatencyHistogram | None = None
    ) -> None:
        super().__init__(record_steps=steps is not None, itl=itl)
        self.replica = replica
        self._request_rows = requests
        self._step_rows = steps
        self._num_done = 0
        self.step_stats = StepStats()

    def on_request_done(self, r: Request) -> None:
        super().on_request_done(r)
        self._request_rows.append((self.replica, *self._requests.pop()))
        self._num_done += 1

    def on_step(
        self, time: float, duration: float, num_steps: int, num_prefill_seqs: int, num_prefill_tokens: int,
        num_decode_seqs: int, num_preempted: int, num_finished: int, usage: PageUsage,
        num_waiting: int, num_running: int,
    ) -> None:  # fmt: skip
        stats = self.step_stats  # inlined StepStats.add: this runs once per engine step
        stats.weight += duration
        if usage.num_pages:
            stats.utilization += duration * usage.pages_used / usage.num_pages
        stats.fragmentation += duration * usage.fragmentation
        if usage.pages_used_max > stats.peak_pages_used:
            stats.peak_pages_used = usage.pages_used_max
        stats.num_steps += num_steps
        if self._step_rows is not None:
            super().on_step(time, duration, num_steps, num_prefill_seqs, num_prefill_tokens, num_decode_seqs,
                            num_preempted, num_finished, usage, num_waiting, num_running)  # fmt: skip
            self._step_rows.append((self.replica, *self._steps.pop()))

    @property
    def num_done(self) -> int:
        return self._num_done

    def requests_frame(self) -> pd.DataFrame:
        raise NotImplementedError("a streaming recorder keeps no rows; read the requests table it wrote")

    def steps_frame(self) -> pd.DataFrame:
        raise NotImplementedError("a streaming recorder keeps no rows; read the steps table it wrote")
