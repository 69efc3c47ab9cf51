"""Run a grid of simulations in parallel (local processes or a Dask cluster) into one tidy table."""

from __future__ import annotations

import dataclasses
import importlib
import json
import multiprocessing
import os
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.std import tqdm

from sim.simulator import SimResult, simulate
from sim.sweep.cache import ResultCache, callable_id, code_version, run_key
from sim.sweep.grid import Grid, GridLike, RunPoint, as_grid, config_fields
from sim.sweep.metrics import standard_metrics
from sim.workloads import parse_workload

ExtraMetrics = Callable[[SimResult], dict[str, float]]
"""A module-level function (or ``functools.partial`` of one) so workers can import it."""


@dataclass
class RunOutput:
    """What a worker sends back: the row and, if asked, the run's tables."""

    key: str
    row: dict[str, Any]
    tables: dict[str, pd.DataFrame] | None = None

    @property
    def ok(self) -> bool:
        return self.row.get("status") == "ok"


def execute_point(
    point: RunPoint, key: str, extra_metrics: ExtraMetrics | None = None, keep_tables: bool = False,
    imports: Sequence[str] = (),
) -> RunOutput:  # fmt: skip
    """Simulate one point (in a worker). Errors become a row with ``status="error"`` rather than raising."""
    t0 = time.perf_counter()
    try:
        for module in imports:
            importlib.import_module(module)
        workload = parse_workload(point.workload, seed=point.config.seed)
        result = simulate(point.config, workload)
        row: dict[str, Any] = {"status": "ok", "error": "", **standard_metrics(result)}
        if extra_metrics is not None:
            row.update({k: float(v) for k, v in extra_metrics(result).items()})
        tables = {"requests": result.requests, "steps": result.steps} if keep_tables else None
    except Exception as err:  # noqa: BLE001 - one bad point must not sink the sweep
        last = traceback.extract_tb(err.__traceback__)[-1:]
        where = f" ({Path(last[0].filename).name}:{last[0].lineno})" if last else ""
        row, tables = {"status": "error", "error": f"{type(err).__name__}: {err}{where}"}, None
    row["wall_s"] = time.perf_counter() - t0
    return RunOutput(key, row, tables)


def _cell(value: Any) -> Any:
    """Tuples become strings so the table stays flat: kwargs pairs as JSON, others comma-joined."""
    if isinstance(value, tuple):
        if all(isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], str) for v in value):
            return json.dumps(dict(value), sort_keys=True) if value else ""
        return ",".join(map(str, value))
    return value


def _identity(point: RunPoint, key: str) -> dict[str, Any]:
    row: dict[str, Any] = {"run_id": key, "workload": point.workload}
    row.update((k, _cell(v)) for k, v in point.params)
    row.update((k, _cell(v)) for k, v in dataclasses.asdict(point.config).items())
    return row


def _merge(identity: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    """A table row: identity columns, then results (a result named like an identity column gets ``_result``)."""
    row = dict(identity)
    row.update((f"{k}_result" if k in identity else k, v) for k, v in result.items())
    return row


def _local_pool(workers: int) -> ProcessPoolExecutor:
    # forkserver: workers start from a clean interpreter, safe even when the parent imported JAX (threads).
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else None)
    return ProcessPoolExecutor(max_workers=workers, mp_context=ctx)


def _run_local(jobs: list[tuple], workers: int, fn: Callable[..., Any] = execute_point) -> Iterator[Any]:
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            yield fn(*job)
        return
    with _local_pool(min(workers, len(jobs))) as pool:
        futures = [pool.submit(fn, *job) for job in jobs]
        for future in as_completed(futures):
            yield future.result()


def _run_dask(jobs: list[tuple], client: Any, fn: Callable[..., Any] = execute_point) -> Iterator[Any]:
    from distributed import as_completed as dask_completed

    futures = [client.submit(fn, *job, key=f"odrive-{fn.__name__}-{job[1]}", pure=False) for job in jobs]
    for future in dask_completed(futures):
        yield future.result()


def run_jobs(
    fn: Callable[..., Any], jobs: Sequence[tuple], *, workers: int | None = None, scheduler_address: str | None = None,
    client: Any = None,
) -> Iterator[Any]:
    """``fn(*job)`` for every job, on the sweep's back ends: a Dask cluster when ``client`` or ``scheduler_address``
    is given, else ``workers`` local processes (default: all cores; 1 runs here). Results come as they finish.
    ``fn`` must be a module-level function (workers import it); each job's second item names it on Dask."""
    own = None
    if client is None and scheduler_address is not None:
        from distributed import Client

        client = own = Client(scheduler_address)
    try:
        if client is not None:
            yield from _run_dask(list(jobs), client, fn)
        else:
            yield from _run_local(list(jobs), workers or os.cpu_count() or 1, fn)
    finally:
        if own is not None:
            own.close()


def run_sweep(
    grid: Grid | GridLike | str | Path,
    *,
    out: str | Path | None = None,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    workers: int | None = None,
    scheduler_address: str | None = None,
    client: Any = None,
    extra_metrics: ExtraMetrics | None = None,
    keep_tables: bool = False,
    imports: Sequence[str] = (),
    progress: bool = True,
    version: str | None = None,
) -> pd.DataFrame:
    """Run every point of ``grid`` and return one row per run, in grid order.

    Columns: ``run_id`` (the cache key), ``workload``, workload parameters, every SimConfig field,
    ``status``/``error``, the summary and :func:`~sim.sweep.metrics.standard_metrics`, any
    ``extra_metrics``, ``wall_s`` and ``cached``. Runs go to a Dask cluster when ``client`` or
    ``scheduler_address`` is given, else to ``workers`` local processes (default: all cores; 1 runs
    in this process). Results are cached in ``cache_dir`` (default ``out/cache``; none without ``out``)
    and reused when the key matches; failed runs are not cached. ``keep_tables`` also caches each run's
    requests/steps tables (read them with ``ResultCache(cache_dir).tables(run_id)``). With ``out``, the
    table is written to ``out/results.parquet`` and ``out/results.csv``.
    """
    grid = as_grid(grid, imports=imports)
    version = version or code_version()
    extra_id = callable_id(extra_metrics)
    if cache_dir is None and out is not None:
        cache_dir = Path(out) / "cache"
    cache = ResultCache(cache_dir) if cache_dir is not None and use_cache else None
    if keep_tables and cache is None:
        raise ValueError("keep_tables needs a cache (pass out or cache_dir, and use_cache=True)")
    keys = [run_key(p, version=version, extra=extra_id) for p in grid.points]
    rows: dict[str, dict[str, Any]] = {}
    jobs = []
    for point, key in zip(grid.points, keys, strict=True):
        hit = cache.get(key, need_tables=keep_tables) if cache else None
        if hit is not None:
            rows[key] = {**hit, "cached": True}
        elif key not in rows:
            rows[key] = {}
            jobs.append((point, key, extra_metrics, keep_tables, grid.imports))
    bar = tqdm(total=len(set(keys)), initial=len(set(keys)) - len(jobs), unit="run", desc="sweep", disable=not progress)
    outputs = run_jobs(execute_point, jobs, workers=workers, scheduler_address=scheduler_address, client=client)
    with bar:
        for output in outputs:
            rows[output.key] = {**output.row, "cached": False}
            if cache is not None and output.ok:
                cache.put(output.key, output.row, output.tables)
            bar.update(1)
    table = pd.DataFrame([_merge(_identity(p, k), rows[k]) for p, k in zip(grid.points, keys, strict=True)])
    tail = ["wall_s", "cached"]
    table = table[[c for c in table.columns if c not in tail] + tail]
    failed = table[table["status"] != "ok"]
    if len(failed):
        print(f"sweep: {len(failed)} of {len(table)} runs failed; first: {failed['error'].iloc[0]}")
    if out is not None:
        save_table(table, out)
    return table


def save_table(table: pd.DataFrame, out: str | Path, name: str = "results") -> list[Path]:
    """Write ``table`` as ``out/name.csv`` and, when pyarrow is present, ``out/name.parquet``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.csv"]
    table.to_csv(paths[0], index=False)
    try:
        table.to_parquet(out / f"{name}.parquet", index=False)
        paths.append(out / f"{name}.parquet")
    except ImportError:  # pragma: no cover - pyarrow is a dev dependency
        pass
    return paths


def config_columns() -> list[str]:
    """The SimConfig columns of a sweep table (useful to tell configuration from metrics)."""
    return config_fields()
