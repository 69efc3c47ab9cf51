"""What every trace reader returns (:class:`TraceRows`), its error (:class:`TraceFormatError`), and file opening
with transparent decompression (``.gz``, ``.xz``, ``.bz2``)."""

from __future__ import annotations

import bz2
import gzip
import lzma
from collections.abc import Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import IO

import numpy as np

from odrive.errors import UserError

COMPRESSIONS = {".gz": gzip.open, ".xz": lzma.open, ".bz2": bz2.open}
MAX_TOKEN_COUNT = 2**31 - 1  # a larger prompt or output length is an error in the trace (and would overflow int64 math)


class TraceFormatError(UserError, ValueError):
    """A malformed trace; the message reads ``PATH:LINE: problem`` (1-based line, a CSV header is line 1)."""

    def __init__(self, path: str | PathLike[str], line: int | None, problem: str) -> None:
        self.path = str(path)
        self.line = line
        self.problem = problem
        where = self.path if line is None else f"{self.path}:{line}"
        super().__init__(f"{where}: {problem}")


@dataclass(frozen=True, eq=False)
class TraceRows:
    """A trace's requests as read (file order, validated), before slicing and re-timing.

    ``times``: arrival times in seconds from the trace's own origin, or None for a trace without arrival
    times (lengths only). ``prompt_token_ids``: per request, its prompt's token ids (None when the trace
    gives none). ``notes``: what the reader did that a user should know (e.g. rows dropped, and why).
    """

    format: str
    prompts: np.ndarray
    outputs: np.ndarray
    times: np.ndarray | None = None
    prompt_token_ids: Sequence[np.ndarray] | None = None
    notes: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.prompts)


def data_suffix(path: Path) -> str:
    """The format suffix of ``path`` with any compression suffix removed: ``a.jsonl.xz`` -> ``.jsonl``."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSIONS:
        suffixes.pop()
    return suffixes[-1] if suffixes else ""


def trace_name(path: Path) -> str:
    """``path``'s file name without its format and compression suffixes: ``a.b.jsonl.xz`` -> ``a.b``."""
    name = path.name
    for suffix in (path.suffix.lower() if path.suffix.lower() in COMPRESSIONS else "", data_suffix(path)):
        if suffix and name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return name


def open_text(path: Path) -> IO[str]:
    """``path`` opened for reading text, decompressed on the fly if its name ends in a compression suffix."""
    if not path.exists():
        raise FileNotFoundError(f"trace file not found: {path}")
    opener = COMPRESSIONS.get(path.suffix.lower())
    if opener is None:
        return open(path, encoding="utf-8", newline="")
    return opener(path, "rt", encoding="utf-8", newline="")  # type: ignore[operator]
