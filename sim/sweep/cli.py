"""``python -m sim.sweep GRID.yaml --out DIR``: run a grid of simulations into one table."""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from odrive.cli_errors import CLIParser, cli_main
from sim.sweep.grid import load_grid
from sim.sweep.runner import config_columns, run_sweep

SHOWN_METRICS = ("request_throughput", "output_token_throughput", "ttft_p50", "ttft_p99", "tpot_p50", "kv_waste")


def varying_columns(table: pd.DataFrame) -> list[str]:
    """The workload, its parameters, and the config fields that differ between rows (what the grid swept)."""
    identity = list(table.columns[1 : table.columns.get_loc("status")])  # after run_id: workload, params, config
    fields = set(config_columns())
    return [c for c in identity if c == "workload" or c not in fields or table[c].astype(str).nunique() > 1]


def build_parser() -> argparse.ArgumentParser:
    p = CLIParser(prog="python -m sim.sweep", description=__doc__)
    p.add_argument("grid", type=Path, help="YAML grid file (see sim/sweep/grid.py for the format)")
    p.add_argument("--out", type=Path, required=True, help="folder for results.parquet, results.csv and cache/")
    p.add_argument("--workers", type=int, default=None, help="local worker processes (default: all cores)")
    p.add_argument("--scheduler-address", default=None, help="run on this Dask scheduler, e.g. tcp://host:8786")
    p.add_argument("--cache-dir", type=Path, default=None, help="default: OUT/cache")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write cached runs")
    p.add_argument("--keep-tables", action="store_true", help="also cache each run's requests/steps tables")
    p.add_argument("--no-progress", action="store_true")
    return p


@cli_main("python -m sim.sweep")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    grid = load_grid(args.grid)
    print(f"{args.grid}: {len(grid)} runs")
    table = run_sweep(
        grid, out=args.out, cache_dir=args.cache_dir, use_cache=not args.no_cache, workers=args.workers,
        scheduler_address=args.scheduler_address, keep_tables=args.keep_tables, progress=not args.no_progress,
    )  # fmt: skip
    shown = varying_columns(table) + [m for m in SHOWN_METRICS if m in table.columns] + ["status", "cached"]
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.max_colwidth", 60):
        print(table[shown].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"wrote {args.out / 'results.parquet'} and {args.out / 'results.csv'} ({int(table['cached'].sum())} cached)")
    return 0 if (table["status"] == "ok").all() else 1
