"""Load request traces into a :class:`Workload`, the format chosen by file extension and header.

- ``.jsonl``: Mooncake (``timestamp`` ms, ``input_length``, ``output_length``, ``hash_ids``; prompts get token
  ids, see :mod:`sim.workloads.mooncake`);
- ``.csv``: Vidur's processed traces, the raw Azure public traces, BurstGPT, or lengths only (see
  :mod:`sim.workloads.trace_csv`).

Either may be compressed (``.gz``, ``.xz``, ``.bz2``; read transparently). A malformed file raises
:class:`TraceFormatError` naming the file, line and problem.
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path

import numpy as np

from sim.workloads.mooncake import DEFAULT_BLOCK_SIZE, read_mooncake
from sim.workloads.request import Workload
from sim.workloads.trace_csv import read_csv_trace
from sim.workloads.trace_rows import TraceFormatError, TraceRows, data_suffix, trace_name

__all__ = ["TraceFormatError", "TraceRows", "load_trace", "read_trace"]


def read_trace(
    path: str | PathLike[str], *, block_size: int = DEFAULT_BLOCK_SIZE, model: str | None = None
) -> TraceRows:
    """Every request of a trace file as read and validated (no slicing or re-timing); ``block_size`` is the
    tokens per hash id of a Mooncake trace, ``model`` keeps one model's rows of a BurstGPT trace."""
    path = Path(path)
    suffix = data_suffix(path)
    if suffix in (".jsonl", ".json"):
        if model is not None:
            raise ValueError(f"{path}: model= applies to BurstGPT traces only; this is a Mooncake trace")
        return read_mooncake(path, block_size)
    if suffix == ".csv":
        if block_size != DEFAULT_BLOCK_SIZE:
            raise ValueError(f"{path}: block_size= applies to Mooncake (JSONL) traces only")
        return read_csv_trace(path, model)
    if not path.exists():
        raise FileNotFoundError(f"trace file not found: {path}")
    raise TraceFormatError(
        path,
        None,
        f"unknown trace format {suffix or '(no extension)'!r}: expected .csv (Vidur, "
        "Azure, BurstGPT, lengths only) or .jsonl (Mooncake), optionally compressed",
    )


def load_trace(
    path: str | PathLike[str],
    *,
    time_scale: float = 1.0,
    max_requests: int | None = None,
    start: int = 0,
    rate: float | None = None,
    interval: float | None = None,
    seed: int = 0,
    block_size: int = DEFAULT_BLOCK_SIZE,
    model: str | None = None,
) -> Workload:
    """Read a trace file (any format of :func:`read_trace`) into a :class:`Workload`.

    Requests ``start`` to ``start + max_requests - 1`` are kept (after BurstGPT's model filter and dropped
    failures). Arrival times come from the trace, or — required for a lengths-only trace, optional for the
    others — from ``rate`` (Poisson arrivals at ``rate`` requests/s, seeded by ``seed``) or ``interval``
    (one request every ``interval`` seconds). They are shifted so the first kept request arrives at 0, then
    multiplied by ``time_scale`` (0.5 replays twice as fast).
    """
    path = Path(path)
    if not time_scale > 0:
        raise ValueError(f"time_scale must be > 0, got {time_scale}")
    if start < 0 or (max_requests is not None and max_requests < 1):
        raise ValueError(f"need start >= 0 and max_requests >= 1, got {start=}, {max_requests=}")
    if rate is not None and interval is not None:
        raise ValueError("give rate= or interval=, not both")
    if (rate is not None and not rate > 0) or (interval is not None and not interval >= 0):
        raise ValueError(f"need rate > 0 and interval >= 0, got {rate=}, {interval=}")
    rows = read_trace(path, block_size=block_size, model=model)
    n = len(rows)
    if start >= n:
        raise ValueError(f"{path}: start={start} is past the trace's {n} requests")
    stop = n if max_requests is None else min(n, start + max_requests)
    kept = stop - start
    if rate is not None:
        gaps = np.random.default_rng(np.random.SeedSequence([seed, 0x7ACE])).exponential(1.0 / rate, size=kept)
        times = np.concatenate(([0.0], np.cumsum(gaps[1:])))
    elif interval is not None:
        times = np.arange(kept, dtype=np.float64) * interval
    elif rows.times is None:
        raise ValueError(f"{path}: a lengths-only trace has no arrival times; add ?rate=R (Poisson arrivals, R "
                         "requests/s) or ?interval=S (one request every S seconds) to the trace spec")  # fmt: skip
    else:
        times = rows.times[start:stop]
    ids = rows.prompt_token_ids
    return Workload(
        arrival_times=(times - times[0]) * time_scale,
        prompt_lens=rows.prompts[start:stop],
        output_lens=rows.outputs[start:stop],
        name=trace_name(path),
        prompt_token_ids=None if ids is None else ids[start:stop],
        notes=rows.notes,
    )
