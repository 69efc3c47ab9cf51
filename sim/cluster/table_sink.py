"""Append-only tables written to disk in chunks (Parquet, or CSV without pyarrow): bounded memory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

try:
    import pyarrow as pa
    import pyarrow.parquet as pq
except ImportError:  # pragma: no cover - pyarrow is a dev dependency
    pa = pq = None

FORMATS = ("parquet", "csv")


def default_format() -> str:
    return "parquet" if pq is not None else "csv"


class TableSink:
    """Collects DataFrame chunks and appends them to ``path`` (``.parquet`` or ``.csv``).

    Parquet needs one schema for all chunks; it is fixed from the first chunk with ``dtypes`` applied
    (so a column that is all None in the first chunk still gets its real type).
    """

    def __init__(self, path: Path, dtypes: dict[str, Any] | None = None) -> None:
        self.path = Path(path)
        self.format = self.path.suffix.lstrip(".")
        if self.format not in FORMATS:
            raise ValueError(f"table file must end in .parquet or .csv, got {self.path}")
        if self.format == "parquet" and pq is None:
            raise ValueError("writing Parquet needs pyarrow; install it or use the csv format")
        self.dtypes = dtypes or {}
        self.num_rows = 0
        self._writer: Any = None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.unlink(missing_ok=True)

    def write(self, frame: pd.DataFrame) -> None:
        if not len(frame):
            return
        frame = frame.astype({k: v for k, v in self.dtypes.items() if k in frame.columns})
        if self.format == "csv":
            frame.to_csv(self.path, mode="a", header=self.num_rows == 0, index=False)
        else:
            table = pa.Table.from_pandas(frame, preserve_index=False)
            if self._writer is None:
                self._writer = pq.ParquetWriter(self.path, table.schema)
            self._writer.write_table(table.cast(self._writer.schema))
        self.num_rows += len(frame)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def read_table(path: Path, columns: list[str] | None = None, exclude: tuple[str, ...] = ()) -> pd.DataFrame:
    """Read back a table written by :class:`TableSink`: only ``columns`` if given, never ``exclude``."""
    path = Path(path)
    if not path.exists():
        return pd.DataFrame(columns=columns or [])
    if path.suffix == ".csv":
        return pd.read_csv(path, usecols=lambda c: (columns is None or c in columns) and c not in exclude)
    if columns is None:
        columns = [c for c in pq.read_schema(path).names if c not in exclude]
    # Low-cardinality strings stay dictionary-encoded (pandas categoricals): a million rows stay small.
    categorical = [c for c in ("status", "finish_reason") if c in columns]
    table = pq.read_table(path, columns=columns, read_dictionary=categorical)
    return table.to_pandas(split_blocks=True, self_destruct=True)  # frees Arrow buffers while converting
