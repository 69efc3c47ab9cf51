"""On-disk cache of sweep runs, keyed by a stable hash of (config, workload spec, code version).

A key covers everything that decides a run's numbers: every SimConfig field, the workload string, the
content of any file the string names (a trace), the extra-metrics function, and :func:`code_version`
(the package version plus a digest of the simulator's source), so editing a policy invalidates old
results. Each run is ``<key>.json`` (its table row), plus ``<key>.requests.parquet`` and
``<key>.steps.parquet`` when tables were kept. Writes are atomic (temp file + rename).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import json
import os
import re
import tempfile
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from odrive.accel import source_digest
from sim.sweep.grid import RunPoint

_SPEC_PARTS = re.compile(r"[:?&,()=]")


@functools.cache
def code_version() -> str:
    """``odrive-<version>+<digest>``: the digest covers every ``.py`` file of the odrive and sim packages."""
    digest = source_digest(Path(__file__).resolve().parents[2])
    try:
        version = metadata.version("odrive")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        version = "0+unknown"
    return f"odrive-{version}+{digest[:16]}"


@functools.cache
def _file_digest(path: str, mtime_ns: int, size: int) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def spec_files(spec: str) -> dict[str, str]:
    """Digests of the files a workload spec names (trace paths, empirical length sources)."""
    out = {}
    for part in _SPEC_PARTS.split(spec):
        part = part.strip()
        if part and os.path.isfile(part):
            st = os.stat(part)
            out[part] = _file_digest(os.path.abspath(part), st.st_mtime_ns, st.st_size)
    return out


def callable_id(fn: Callable[..., Any] | None) -> str | None:
    """A stable identity for an extra-metrics function: qualified name + source digest (and the bound
    arguments of a ``functools.partial``)."""
    if fn is None:
        return None
    if isinstance(fn, functools.partial):
        args = json.dumps([list(map(repr, fn.args)), {k: repr(v) for k, v in sorted(fn.keywords.items())}])
        return f"{callable_id(fn.func)}{args}"
    name = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__qualname__)}"
    try:
        source = inspect.getsource(fn)
    except (OSError, TypeError):
        source = repr(fn)
    return f"{name}@{hashlib.sha256(source.encode()).hexdigest()[:12]}"


def run_key(point: RunPoint, *, version: str, extra: str | None = None) -> str:
    """The cache key of one run: :func:`document_key` of its config, workload (and the files it names), code
    version and extra-metrics function."""
    document = {
        "config": dataclasses.asdict(point.config),
        "workload": point.workload,
        "files": spec_files(point.workload),
        "code": version,
        "extra": extra,
    }
    return document_key(document)


def document_key(document: dict[str, Any]) -> str:
    """20 hex digits of a SHA-256 over ``document`` as canonical JSON (what every cache key hashes)."""
    text = json.dumps(document, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


class ResultCache:
    """A folder of cached runs."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def _path(self, key: str, suffix: str) -> Path:
        return self.root / key[:2] / f"{key}{suffix}"

    def get(self, key: str, *, need_tables: bool = False) -> dict[str, Any] | None:
        """The cached row of ``key``, or None (also None when tables are needed but were not kept)."""
        path = self._path(key, ".json")
        if not path.is_file():
            return None
        if need_tables and not all(self._path(key, f".{t}.parquet").is_file() for t in ("requests", "steps")):
            return None
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:  # a torn file from a killed writer: treat as a miss
            return None

    def put(self, key: str, row: dict[str, Any], tables: dict[str, pd.DataFrame] | None = None) -> None:
        for name, frame in (tables or {}).items():
            self._atomic(self._path(key, f".{name}.parquet"), lambda p, f=frame: f.to_parquet(p, index=False))
        text = json.dumps(row, allow_nan=True)
        self._atomic(self._path(key, ".json"), lambda p: Path(p).write_text(text))

    def tables(self, key: str) -> tuple[pd.DataFrame, pd.DataFrame]:
        """The kept (requests, steps) tables of a run; KeyError if the run kept none."""
        paths = [self._path(key, f".{t}.parquet") for t in ("requests", "steps")]
        if not all(p.is_file() for p in paths):
            raise KeyError(f"run {key} has no kept tables in {self.root} (run the sweep with keep_tables=True)")
        return pd.read_parquet(paths[0]), pd.read_parquet(paths[1])

    def _atomic(self, path: Path, write: Callable[[str], object]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            write(tmp)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
