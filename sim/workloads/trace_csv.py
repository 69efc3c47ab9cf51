"""CSV request traces, recognised by their header.

=============  ====================================================================  ==========================
format         columns used (others are ignored)                                     arrival times
=============  ====================================================================  ==========================
``vidur``      ``arrived_at, num_prefill_tokens, num_decode_tokens``                 seconds
``azure``      ``TIMESTAMP, ContextTokens, GeneratedTokens`` (Azure public traces)   date-times
``burstgpt``   ``Timestamp, Model, Request tokens, Response tokens``                 seconds
``lengths``    ``num_prefill_tokens, num_decode_tokens`` (e.g. Vidur's arXiv set)    none: give a rate
=============  ====================================================================  ==========================

The whole file is validated and the first bad line raises :class:`TraceFormatError` naming the file, line
and problem: values present and numeric, token counts whole and >= 1, arrival times non-negative and
non-decreasing. One exception, documented: BurstGPT logs failed requests with 0 response tokens; those rows
are dropped and counted (the count is a note on the result). ``model=`` keeps one BurstGPT model's rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from sim.workloads.trace_rows import MAX_TOKEN_COUNT, TraceFormatError, TraceRows


@dataclass(frozen=True)
class CsvFormat:
    """Which columns of a CSV trace hold what."""

    name: str
    prompt: str
    output: str
    time: str | None = None  # None: the trace has no arrival times
    datetime_times: bool = False  # times are date-times (else seconds)
    model: str | None = None  # the column ``model=`` filters on
    failed_without_output: bool = False  # rows with 0 output tokens are failed requests: dropped and counted

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(c for c in (self.time, self.prompt, self.output, self.model) if c is not None)


CSV_FORMATS = (
    CsvFormat("vidur", "num_prefill_tokens", "num_decode_tokens", time="arrived_at"),
    CsvFormat("azure", "ContextTokens", "GeneratedTokens", time="TIMESTAMP", datetime_times=True),
    CsvFormat(
        "burstgpt", "Request tokens", "Response tokens", time="Timestamp", model="Model", failed_without_output=True
    ),  # fmt: skip
    CsvFormat("lengths", "num_prefill_tokens", "num_decode_tokens"),
)


def _line(row: int) -> int:
    """1-based file line of data row ``row`` (0-based), one record per line after the header."""
    return row + 2


def detect_format(path: Path, columns: list[str]) -> CsvFormat:
    """The format whose columns the header has; else :class:`TraceFormatError` naming the closest one's missing
    columns (or every known header when none is close)."""
    found = set(columns)
    for fmt in CSV_FORMATS:
        if found.issuperset(fmt.columns):
            return fmt
    best = max(CSV_FORMATS, key=lambda f: len(found.intersection(f.columns)))
    if found.intersection(best.columns):
        missing = [c for c in best.columns if c not in found]
        raise TraceFormatError(path, 1, f"missing column(s) {', '.join(missing)} of a {best.name} trace "
                                        f"({', '.join(best.columns)}); found: {', '.join(columns)}")  # fmt: skip
    known = "; ".join(f"{f.name}: {', '.join(f.columns)}" for f in CSV_FORMATS)
    raise TraceFormatError(path, 1, f"unrecognised trace header {', '.join(columns)}; known formats: {known}")


class _RawText:
    """The file's cells as written, read again as text only when an error message needs one."""

    def __init__(self, path: Path, columns: dict[str, str]) -> None:
        self.path = path
        self.columns = columns  # stripped name -> name in the file

    @cached_property
    def frame(self) -> pd.DataFrame:
        return pd.read_csv(self.path, usecols=list(self.columns.values()), dtype=str, keep_default_na=False,
                           skip_blank_lines=False)  # fmt: skip

    def __call__(self, column: str, row: int) -> str:
        return str(self.frame[self.columns[column]].iat[row]).strip()


def _read(path: Path) -> tuple[CsvFormat, pd.DataFrame, _RawText]:
    try:
        header = pd.read_csv(path, nrows=0)
    except FileNotFoundError:
        raise FileNotFoundError(f"trace file not found: {path}") from None
    except pd.errors.EmptyDataError:
        raise TraceFormatError(path, None, "file is empty (expected a CSV header)") from None
    except pd.errors.ParserError as err:
        raise TraceFormatError(path, None, f"malformed CSV: {err}") from None
    names = {str(c).strip(): str(c) for c in header.columns}
    fmt = detect_format(path, list(names))
    wanted = {c: names[c] for c in fmt.columns}
    text_columns = [c for c in (fmt.model, fmt.time if fmt.datetime_times else None) if c is not None]
    try:
        frame = pd.read_csv(path, usecols=list(wanted.values()), keep_default_na=False, skip_blank_lines=False,
                            dtype={wanted[c]: str for c in text_columns})  # fmt: skip
    except pd.errors.ParserError as err:
        raise TraceFormatError(path, None, f"malformed CSV: {err}") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    if len(frame) == 0:
        raise TraceFormatError(path, None, "trace has no requests")
    return fmt, frame, _RawText(path, wanted)


def _numeric(column: pd.Series) -> np.ndarray:
    """float64 values; NaN where a cell is empty or not a number."""
    if pd.api.types.is_numeric_dtype(column.dtype):
        return column.to_numpy(dtype=np.float64, na_value=np.nan)
    return pd.to_numeric(column.astype(str).str.strip(), errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


def _validated(path: Path, fmt: CsvFormat, frame: pd.DataFrame, raw: _RawText) -> dict[str, np.ndarray]:
    """Times (seconds from the first row), prompts, outputs; :class:`TraceFormatError` at the first bad line."""
    problems: list[tuple[int, int, str]] = []  # (row, check order, message)

    def check(mask: np.ndarray, describe: Callable[[int], str]) -> None:
        hits = np.flatnonzero(mask)
        if len(hits):
            problems.append((int(hits[0]), len(problems), describe(int(hits[0]))))

    def bad_value(column: str, what: str) -> Callable[[int], str]:
        return lambda r: (f"missing value in column {column!r}" if raw(column, r) == ""
                          else f"{what} {raw(column, r)!r} in column {column!r}")  # fmt: skip

    counts = {c: _numeric(frame[c]) for c in (fmt.prompt, fmt.output)}
    for c in (fmt.prompt, fmt.output):
        check(~np.isfinite(counts[c]), bad_value(c, "non-numeric value"))
    times = None
    if fmt.time is not None:
        t = fmt.time
        if fmt.datetime_times:
            stamps = pd.to_datetime(frame[t].astype(str).str.strip(), format="ISO8601", errors="coerce")
            ok = stamps.notna().to_numpy()
            check(~ok, bad_value(t, "unreadable date-time"))
            first = stamps[ok].iloc[0] if ok.any() else pd.Timestamp(0)
            times = ((stamps - first).dt.total_seconds()).to_numpy(dtype=np.float64, na_value=np.nan)
        else:
            times = _numeric(frame[t])
            check(~np.isfinite(times), bad_value(t, "non-numeric value"))
            check(times < 0, lambda r: f"negative arrival time {t}={raw(t, r)}")
        check(np.diff(times, prepend=-np.inf) < 0, lambda r: (
            f"arrival times must be non-decreasing: {t}={raw(t, r)} comes after {raw(t, r - 1)} on line {_line(r - 1)}"
        ))  # fmt: skip
    for c, what in ((fmt.prompt, "prompt"), (fmt.output, "output")):
        values = counts[c]
        check(np.isfinite(values) & (values != np.floor(values)),
              lambda r, c=c: f"token count {c}={raw(c, r)} is not a whole number")  # fmt: skip
        least = 0 if what == "output" and fmt.failed_without_output else 1
        check(
            values < least, lambda r, c=c, what=what, least=least: f"{what} length {c}={raw(c, r)} must be >= {least}"
        )
        check(values > MAX_TOKEN_COUNT,
              lambda r, c=c, w=what: f"{w} length {c}={raw(c, r)} is over {MAX_TOKEN_COUNT:,} tokens")  # fmt: skip
    if problems:
        row, _, message = min(problems)
        raise TraceFormatError(path, _line(row), message)
    return {
        "times": times,
        "prompts": counts[fmt.prompt].astype(np.int64),
        "outputs": counts[fmt.output].astype(np.int64),
    }


def read_csv_trace(path: Path, model: str | None = None) -> TraceRows:
    """Read and validate a CSV trace of any format in :data:`CSV_FORMATS` (see the module docstring)."""
    fmt, frame, raw = _read(path)
    if model is not None and fmt.model is None:
        raise ValueError(f"{path}: model= applies to BurstGPT traces only; this is a {fmt.name} trace")
    columns = _validated(path, fmt, frame, raw)
    keep = np.ones(len(frame), dtype=bool)
    notes: list[str] = []
    if model is not None and fmt.model is not None:
        models = frame[fmt.model].astype(str).str.strip()
        keep = (models == model).to_numpy()
        if not keep.any():
            present = ", ".join(f"{m} ({n:,})" for m, n in models.value_counts().items())
            raise ValueError(f"{path}: no requests of model {model!r}; models in the trace: {present}")
    if fmt.failed_without_output:
        failed = keep & (columns["outputs"] == 0)
        if failed.any():
            notes.append(f"{path.name}: dropped {int(failed.sum()):,} failed requests (0 response tokens) of "
                         f"{int(keep.sum()):,}{f' of model {model}' if model else ''}")  # fmt: skip
        keep = keep & ~failed
        if not keep.any():
            raise TraceFormatError(path, None, "every request failed (0 response tokens): nothing to replay")
    times = columns["times"]
    return TraceRows(
        format=fmt.name,
        prompts=columns["prompts"][keep],
        outputs=columns["outputs"][keep],
        times=None if times is None else times[keep],
        notes=tuple(notes),
    )
