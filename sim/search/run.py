"""Search every configuration of a grid (in parallel, on the sweep runner's local pool or Dask) and rank them."""

from __future__ import annotations

import math
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.std import tqdm

from odrive.errors import ConfigError
from sim.cluster.spec import ClusterSpec
from sim.search.capacity import SearchSettings, search_capacity
from sim.search.slo import SLO
from sim.sweep.cache import code_version, document_key
from sim.sweep.runner import run_jobs, save_table


def describe(spec: ClusterSpec) -> dict[str, Any]:
    """A configuration as table columns (a pool's overrides as ``prefill.FIELD`` / ``decode.FIELD``)."""
    cfg = spec.replica
    row: dict[str, Any] = {
        "split": spec.split(), "accelerator": cfg.accelerator, "tensor_parallel_size": cfg.tp,
        "replicas": spec.replicas if not spec.disaggregated else spec.prefill_replicas + spec.num_decode,
        "scheduler": cfg.scheduler, "page_size": cfg.page_size, "chunk_size": cfg.chunk_size, "model": cfg.model,
        "router": spec.router,
    }  # fmt: skip
    for pool, overrides in (("prefill", spec.prefill), ("decode", spec.decode)):
        for name, value in overrides:
            row[f"{pool}.{name}"] = value
    row["accelerators"] = spec.accelerators
    return row


def search_job(
    spec: ClusterSpec, key: str, workload_spec: str, slo: SLO, settings: SearchSettings, seed: int,
    cache_dir: str | None, version: str,
) -> dict[str, Any]:  # fmt: skip
    """One configuration's capacity (in a worker); errors become a row with ``status="error"``."""
    t0 = time.perf_counter()
    row: dict[str, Any] = {"key": key}
    try:
        found, simulated = search_capacity(spec, workload_spec, slo, settings, seed=seed, cache_dir=cache_dir,
                                           version=version)  # fmt: skip
        row.update(status="ok", error="", capacity_rps=found.capacity, fails_at_rps=found.fails_at,
                   runs=len(found.evaluations), runs_simulated=simulated)  # fmt: skip
        row.update({f"at_capacity_{k}": v for k, v in found.at_capacity().items()})
        row["evaluations"] = [(e.rate, e.met) for e in found.evaluations]
    except Exception as err:  # noqa: BLE001 - one bad configuration must not sink the search
        last = traceback.extract_tb(err.__traceback__)[-1:]
        where = f" ({Path(last[0].filename).name}:{last[0].lineno})" if last else ""
        row.update(status="error", error=f"{type(err).__name__}: {err}{where}")
    row["wall_s"] = time.perf_counter() - t0
    return row


def hourly_cost(spec: ClusterSpec, costs: Mapping[str, float]) -> float:
    """$ per hour of the cluster's accelerators (``costs``: $ per accelerator-hour by accelerator name)."""
    missing = sorted(set(spec.devices()) - set(costs))
    if missing:
        raise ConfigError(f"--cost gives no price for {', '.join(missing)} (used by the grid)")
    return sum(count * costs[name] for name, count in spec.devices().items())


def run_search(
    specs: Sequence[ClusterSpec], workload_spec: str, slo: SLO, *, settings: SearchSettings | None = None,
    costs: Mapping[str, float] | None = None, seed: int = 0, out: str | Path | None = None,
    cache_dir: str | Path | None = None, use_cache: bool = True, workers: int | None = None,
    scheduler_address: str | None = None, client: Any = None, progress: bool = True,
) -> pd.DataFrame:  # fmt: skip
    """The capacity of every configuration, ranked best first: by requests per dollar with ``costs``, else by
    capacity per accelerator. Every simulated run is cached under ``cache_dir`` (default ``out/cache``)."""
    settings = settings or SearchSettings()
    if costs:
        for spec in specs:
            hourly_cost(spec, costs)  # a missing price fails before any simulation
    if cache_dir is None and out is not None:
        cache_dir = Path(out) / "cache"
    cache = str(cache_dir) if cache_dir is not None and use_cache else None
    version = code_version()
    jobs = []
    for spec in specs:
        key = document_key({"spec": repr(spec), "workload": workload_spec, "slo": repr(slo), "seed": seed})
        jobs.append((spec, key, workload_spec, slo, settings, seed, cache, version))
    by_key: dict[str, dict[str, Any]] = {}
    with tqdm(total=len(jobs), unit="config", desc="search", disable=not progress) as bar:
        for row in run_jobs(search_job, jobs, workers=workers, scheduler_address=scheduler_address, client=client):
            by_key[row["key"]] = row
            bar.update(1)
    rows = []
    for spec, key, *_ in jobs:
        row = {**describe(spec), **by_key[key]}
        row["capacity_per_accelerator"] = row.get("capacity_rps", math.nan) / spec.accelerators
        if costs:
            row["cost_per_hour"] = hourly_cost(spec, costs)
            row["requests_per_dollar"] = row.get("capacity_rps", math.nan) * 3600 / row["cost_per_hour"]
        rows.append(row)
    table = pd.DataFrame(rows).drop(columns=["key"])
    rank_by = "requests_per_dollar" if costs else "capacity_per_accelerator"
    table = table.sort_values(rank_by, ascending=False, kind="stable", na_position="last").reset_index(drop=True)
    table.insert(0, "rank", range(1, len(table) + 1))
    if out is not None:
        flat = table.assign(evaluations=table["evaluations"].astype(str)) if "evaluations" in table else table
        save_table(flat, out, "search")
    return table
