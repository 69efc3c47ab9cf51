"""A measured profile: a tidy table (one row per grid point or engine scenario) plus a metadata JSON."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from odrive.calibration.features import EngineGeometry

FORMAT_VERSION = 1
PROFILE_DIR = Path(__file__).resolve().parents[2] / "data" / "profiles"


@dataclass
class Profile:
    """``table`` rows: ``source == "forward"`` (the executor step alone, one row per grid point) and
    ``source == "engine"`` (whole ``Engine.step`` periods of the real loop, for host overhead).
    ``meta``: device, model, dtype, jax version, geometry, grid, date, fit and held-out error."""

    table: pd.DataFrame
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def forward(self) -> pd.DataFrame:
        return self.table[self.table["source"] == "forward"].reset_index(drop=True)

    @property
    def engine(self) -> pd.DataFrame:
        return self.table[self.table["source"] == "engine"].reset_index(drop=True)

    @property
    def swaps(self) -> pd.DataFrame:
        """Swap preemption's copies of one request's pages (``odrive.profiling.profiler.measure_swaps``); empty in
        older profiles."""
        return self.table[self.table["source"] == "swap"].reset_index(drop=True)

    @property
    def replay(self) -> pd.DataFrame:
        """Back-to-back steps of replayed workloads (``odrive.calibration.replay_fit``); empty in older profiles."""
        return self.table[self.table["source"] == "replay"].reset_index(drop=True)

    def geometry(self, page_size: int | None = None) -> EngineGeometry:
        """The geometry the profile was measured with (for ``page_size``, default the first profiled one)."""
        geos = self.meta["geometries"]
        key = str(page_size if page_size is not None else self.meta["page_sizes"][0])
        if key not in geos:
            raise KeyError(f"profile has no geometry for page_size={page_size}; has {sorted(geos)}")
        return EngineGeometry.from_dict(geos[key])

    def save(self, path: str | Path) -> tuple[Path, Path]:
        """Write ``PATH.csv`` (or ``.parquet``) and ``PATH.json``; returns both paths."""
        path = Path(path)
        if path.suffix not in (".csv", ".parquet"):
            path = path.with_suffix(".csv")
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".parquet":
            self.table.to_parquet(path, index=False)
        else:
            self.table.to_csv(path, index=False, float_format="%.9g")
        meta_path = path.with_suffix(".json")
        meta = {**self.meta, "format_version": FORMAT_VERSION, "table": path.name}
        meta_path.write_text(json.dumps(meta, indent=2, sort_keys=False, default=_jsonable) + "\n")
        self.path = path
        return path, meta_path

    @classmethod
    def load(cls, path: str | Path) -> Profile:
        """Load from the table path or the metadata JSON path."""
        path = Path(path)
        if path.suffix == ".json":
            meta = json.loads(path.read_text())
            path = path.with_name(meta.get("table", path.with_suffix(".csv").name))
        else:
            meta_path = path.with_suffix(".json")
            if not meta_path.is_file():
                raise FileNotFoundError(f"profile metadata {meta_path} not found next to {path}")
            meta = json.loads(meta_path.read_text())
        if not path.is_file():
            raise FileNotFoundError(f"profile table not found: {path}")
        table = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
        version = meta.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(f"{path}: profile format version {version}, this code reads {FORMAT_VERSION}")
        return cls(table, meta, path)


def _jsonable(x: Any) -> Any:
    if hasattr(x, "item"):
        return x.item()
    if isinstance(x, (set, tuple)):
        return list(x)
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serializable: {type(x).__name__}")


def find_profile(model_name: str, directory: Path = PROFILE_DIR) -> Path:
    """The shipped profile whose metadata names model spec ``model_name`` (one measured without core pinning
    first: it describes the engine as it normally runs)."""
    hits: list[tuple[bool, Path]] = []
    for meta_path in sorted(directory.glob("*.json")):
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            continue
        if meta.get("model", {}).get("spec_name") == model_name:
            hits.append((bool(meta.get("host", {}).get("pinning")), meta_path))
    if not hits:
        raise FileNotFoundError(
            f"no profile for model {model_name!r} in {directory}; run `odrive profile` and pass profile=PATH"
        )
    return min(hits)[1]
