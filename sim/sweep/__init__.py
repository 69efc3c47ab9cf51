"""Parameter sweeps: expand a grid of SimConfig fields x workloads, run it in parallel, cache every run.

``run_sweep(grid, out=DIR)`` returns one tidy DataFrame (one row per run: config fields, workload,
summary metrics) and writes it as Parquet and CSV; ``python -m sim.sweep GRID.yaml --out DIR`` does the
same from the shell. Runs are cached on disk by a stable hash of (config, workload spec, code version),
so a rerun only simulates what changed.

Where runs execute: locally on all cores by default (``concurrent.futures.ProcessPoolExecutor``), or on a
**Dask distributed** cluster when given a scheduler address (``tcp://host:8786``) or a ``Client``. Dask
rather than Ray because: it is a lighter, pure-Python install (no compiled core or object-store daemon);
``distributed.LocalCluster`` gives a real scheduler and workers inside a test process; and its futures API
(``client.submit`` / ``as_completed``) mirrors ``concurrent.futures``, so both back ends share one loop.
Simulations are independent CPU-bound tasks with small inputs, so nothing beyond futures is needed.
Dask workers must have odrive installed and see the files a workload names (traces) at the same paths;
plug-in policies registered outside odrive are imported on workers via the grid's ``imports``.
"""

from sim.sweep.cache import ResultCache, code_version, run_key
from sim.sweep.grid import Grid, GridError, RunPoint, expand_grid, load_grid
from sim.sweep.metrics import kv_metrics, prefix_metrics, slo_metrics, slo_result_metrics, standard_metrics
from sim.sweep.runner import execute_point, run_sweep, save_table

__all__ = [
    "Grid",
    "GridError",
    "ResultCache",
    "RunPoint",
    "code_version",
    "execute_point",
    "expand_grid",
    "kv_metrics",
    "load_grid",
    "prefix_metrics",
    "run_key",
    "run_sweep",
    "save_table",
    "slo_metrics",
    "slo_result_metrics",
    "standard_metrics",
]
