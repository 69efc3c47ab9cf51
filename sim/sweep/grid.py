"""Sweep grids: dicts of lists (Cartesian product), lists of such dicts (union), or a YAML file of either.

A grid names :class:`~sim.config.SimConfig` fields and ``workload`` (a :func:`~sim.workloads.parse_workload`
string). Any other key is a *workload parameter*: it must appear as ``{key}`` in the workload string, is
substituted there, and becomes a column of the results::

    {"workload": "poisson:rate={rate},n=200,prompt=512,output=128", "rate": [1, 2, 4],
     "scheduler": ["fcfs"], "page_size": [16, 32]}            # 3 x 1 x 2 = 6 runs

Scalars mean one value; a dict value (e.g. ``latency_kwargs``) becomes a sorted tuple of pairs and a list
value of a tuple field (e.g. ``prefill_lengths``) a tuple, so every config stays hashable. A YAML file may
also be a mapping ``{grid: <grid>, base: {field: value}, imports: [module, ...]}``: ``base`` fixes fields
for every entry and ``imports`` names modules that register plug-in policies (imported by every worker).
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from odrive.errors import UserError
from sim.config import SimConfig

GridLike = Mapping[str, Any] | Sequence[Mapping[str, Any]]
WORKLOAD_KEY = "workload"


class GridError(UserError, ValueError):
    """A grid that names unknown fields, lacks a workload, or cannot build a SimConfig."""


@dataclass(frozen=True)
class RunPoint:
    """One simulation of a sweep: a config, a workload spec (seeded by ``config.seed``) and the values
    of the workload parameters that produced the spec."""

    config: SimConfig
    workload: str
    params: tuple[tuple[str, Any], ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class Grid:
    """An expanded grid: its points in order and the modules workers import first."""

    points: tuple[RunPoint, ...]
    imports: tuple[str, ...] = ()

    @property
    def param_names(self) -> list[str]:
        names: dict[str, None] = {}
        for p in self.points:
            names.update((k, None) for k, _ in p.params)
        return list(names)

    def __len__(self) -> int:
        return len(self.points)


def config_fields() -> list[str]:
    """SimConfig's field names, read at run time (other code may add fields)."""
    return [f.name for f in dataclasses.fields(SimConfig)]


def hashable(value: Any) -> Any:
    """A grid value as a hashable config value: mappings become sorted tuples of pairs, lists tuples."""
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), hashable(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return tuple(hashable(v) for v in value)
    return value


def _template_keys(workload: str) -> set[str]:
    try:
        return {name for _, name, _, _ in string.Formatter().parse(workload) if name}
    except ValueError as err:
        raise GridError(f"workload template {workload!r}: {err}") from None


def axis_values(key: str, value: Any) -> list[Any]:
    """A grid entry's values: a list or tuple is a set of values, anything else one value. A tuple-typed
    field (``prefill_lengths``) given one flat list of numbers is one value, not a set."""
    if isinstance(value, list | tuple):
        if key == "prefill_lengths" and value and all(isinstance(v, int) for v in value):
            return [tuple(value)]
        if not value:
            raise GridError(f"grid key {key!r} has an empty list of values")
        return list(value)
    return [value]


def _expand_one(entry: Mapping[str, Any], base: Mapping[str, Any]) -> list[RunPoint]:
    merged = {**base, **entry}
    if WORKLOAD_KEY not in merged:
        raise GridError(f"grid entry {dict(entry)!r} has no {WORKLOAD_KEY!r} key")
    known = set(config_fields())
    keys = list(merged)
    axes = [axis_values(k, merged[k]) for k in keys]
    points = []
    for combo in itertools.product(*axes):
        chosen = dict(zip(keys, combo, strict=True))
        workload = chosen.pop(WORKLOAD_KEY)
        if not isinstance(workload, str):
            raise GridError(f"workload must be a spec string, got {workload!r}")
        used = _template_keys(workload)
        params = {k: v for k, v in chosen.items() if k not in known}
        for key in params:
            if key not in used:
                hint = difflib.get_close_matches(key, sorted(known), n=1)
                raise GridError(
                    f"grid key {key!r} is neither a SimConfig field nor a {{{key}}} placeholder in the workload "
                    f"{workload!r}" + (f"; did you mean {hint[0]!r}?" if hint else "")
                )
        missing = used - params.keys()
        if missing:
            raise GridError(f"workload {workload!r} needs value(s) for {', '.join(sorted(missing))}")
        spec = workload.format(**params) if used else workload
        overrides = {k: hashable(v) for k, v in chosen.items() if k in known}
        try:
            config = SimConfig(**overrides)
        except TypeError as err:
            raise GridError(f"cannot build SimConfig from {overrides!r}: {err}") from None
        points.append(RunPoint(config, spec, tuple((k, hashable(v)) for k, v in params.items())))
    return points


def expand_grid(grid: GridLike, *, base: Mapping[str, Any] | None = None, imports: Sequence[str] = ()) -> Grid:
    """All runs of ``grid`` in order (the first key varies slowest), duplicates dropped."""
    entries = [grid] if isinstance(grid, Mapping) else list(grid)
    if not entries:
        raise GridError("the grid is empty")
    seen: dict[RunPoint, None] = {}
    for entry in entries:
        if not isinstance(entry, Mapping):
            raise GridError(f"a grid entry must be a mapping, got {entry!r}")
        seen.update((p, None) for p in _expand_one(entry, base or {}))
    return Grid(tuple(seen), tuple(imports))


def load_grid(path: str | Path) -> Grid:
    """Read a YAML grid file (needs PyYAML): a grid, or ``{grid:, base:, imports:}``."""
    try:
        import yaml
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("reading a YAML grid needs PyYAML: pip install pyyaml") from err
    path = Path(path)
    with path.open() as fh:
        try:
            data = yaml.safe_load(fh)
        except yaml.YAMLError as err:
            raise GridError(f"{path}: not valid YAML: {' '.join(str(err).split())}") from None
    if isinstance(data, Mapping) and "grid" in data:
        extra = set(data) - {"grid", "base", "imports"}
        if extra:
            raise GridError(f"{path}: unknown top-level key(s) {', '.join(sorted(extra))}; use grid, base, imports")
        return expand_grid(data["grid"], base=data.get("base") or {}, imports=data.get("imports") or ())
    if not isinstance(data, Mapping | list):
        raise GridError(f"{path}: expected a mapping or a list of mappings, got {type(data).__name__}")
    return expand_grid(data)


def as_grid(grid: Grid | GridLike | str | Path, *, imports: Sequence[str] = ()) -> Grid:
    """Accept an expanded Grid, a Python grid, or the path of a YAML grid file."""
    if isinstance(grid, Grid):
        return Grid(grid.points, tuple(dict.fromkeys((*grid.imports, *imports))))
    if isinstance(grid, str | Path):
        loaded = load_grid(grid)
        return Grid(loaded.points, tuple(dict.fromkeys((*loaded.imports, *imports))))
    return expand_grid(grid, imports=imports)
