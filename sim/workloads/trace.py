"""Load request traces in the Vidur/Azure CSV format: ``arrived_at,num_prefill_tokens,num_decode_tokens``."""

from __future__ import annotations

from collections.abc import Callable
from os import PathLike
from pathlib import Path

import numpy as np
import pandas as pd

from sim.workloads.request import Workload

TIME_COLUMN = "arrived_at"
PROMPT_COLUMN = "num_prefill_tokens"
OUTPUT_COLUMN = "num_decode_tokens"
REQUIRED_COLUMNS = (TIME_COLUMN, PROMPT_COLUMN, OUTPUT_COLUMN)


class TraceFormatError(ValueError):
    """A malformed trace; the message reads ``PATH:LINE: problem`` (1-based line, header is line 1)."""

    def __init__(self, path: str | PathLike[str], line: int | None, problem: str) -> None:
        self.path = str(path)
        self.line = line
        self.problem = problem
        where = self.path if line is None else f"{self.path}:{line}"
        super().__init__(f"{where}: {problem}")


def _line(row: int) -> int:
    """1-based file line of data row ``row`` (0-based), one record per line after the header."""
    return row + 2


def _first(mask: np.ndarray) -> int | None:
    hits = np.flatnonzero(mask)
    return int(hits[0]) if len(hits) else None


def _read(path: Path) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skip_blank_lines=False)
    except FileNotFoundError:
        raise FileNotFoundError(f"trace file not found: {path}") from None
    except pd.errors.EmptyDataError:
        raise TraceFormatError(path, None, "file is empty (expected a CSV header)") from None
    except pd.errors.ParserError as err:
        raise TraceFormatError(path, None, f"malformed CSV: {err}") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise TraceFormatError(path, 1, f"missing column(s) {', '.join(missing)}; found: {', '.join(frame.columns)}")
    if len(frame) == 0:
        raise TraceFormatError(path, None, "trace has no requests")
    return frame


def _validated_columns(path: Path, frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """Numeric columns, raising :class:`TraceFormatError` at the first bad line."""
    raw = {c: frame[c].astype(str).str.strip() for c in REQUIRED_COLUMNS}
    values = {
        c: pd.to_numeric(raw[c], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan) for c in REQUIRED_COLUMNS
    }
    problems: list[tuple[int, int, str]] = []  # (row, check order, message)

    def check(mask: np.ndarray, describe: Callable[[int], str]) -> None:
        row = _first(mask)
        if row is not None:
            problems.append((row, len(problems), describe(row)))

    for c in REQUIRED_COLUMNS:
        check(
            ~np.isfinite(values[c]),
            lambda r, c=c: (
                f"missing value in column {c!r}"
                if raw[c].iat[r] == ""
                else f"non-numeric value {raw[c].iat[r]!r} in column {c!r}"
            ),
        )
    times, prompts, outputs = (values[c] for c in REQUIRED_COLUMNS)
    check(times < 0, lambda r: f"negative arrival time {TIME_COLUMN}={raw[TIME_COLUMN].iat[r]}")
    check(
        np.diff(times, prepend=-np.inf) < 0,
        lambda r: (
            f"arrival times must be non-decreasing: {TIME_COLUMN}={raw[TIME_COLUMN].iat[r]} comes after "
            f"{raw[TIME_COLUMN].iat[r - 1]} on line {_line(r - 1)}"
        ),
    )
    for c, what in ((PROMPT_COLUMN, "prompt"), (OUTPUT_COLUMN, "output")):
        check(
            np.isfinite(values[c]) & (values[c] != np.floor(values[c])),
            lambda r, c=c: f"token count {c}={raw[c].iat[r]} is not a whole number",
        )
        check(values[c] < 1, lambda r, c=c, what=what: f"{what} length {c}={raw[c].iat[r]} must be >= 1")
    if problems:
        row, _, message = min(problems)
        raise TraceFormatError(path, _line(row), message)
    return {"times": times, "prompts": prompts.astype(np.int64), "outputs": outputs.astype(np.int64)}


def load_trace(
    path: str | PathLike[str], *, time_scale: float = 1.0, max_requests: int | None = None, start: int = 0
) -> Workload:
    """Read a trace CSV into a :class:`Workload`.

    The whole file is validated (columns present; values numeric; token counts whole and >= 1,
    so a request must produce at least one output token; arrival times >= 0 and non-decreasing)
    and a :class:`TraceFormatError` names the file, line and problem. Rows ``start`` to
    ``start + max_requests - 1`` are kept; their arrival times are shifted so the first kept
    request arrives at 0, then multiplied by ``time_scale`` (0.5 replays twice as fast).
    Extra columns are ignored.
    """
    path = Path(path)
    if not time_scale > 0:
        raise ValueError(f"time_scale must be > 0, got {time_scale}")
    if start < 0 or (max_requests is not None and max_requests < 1):
        raise ValueError(f"need start >= 0 and max_requests >= 1, got {start=}, {max_requests=}")
    columns = _validated_columns(path, _read(path))
    n = len(columns["times"])
    if start >= n:
        raise ValueError(f"{path}: start={start} is past the trace's {n} requests")
    stop = n if max_requests is None else min(n, start + max_requests)
    times = columns["times"][start:stop]
    return Workload(
        arrival_times=(times - times[0]) * time_scale,
        prompt_lens=columns["prompts"][start:stop],
        output_lens=columns["outputs"][start:stop],
        name=path.stem,
    )
