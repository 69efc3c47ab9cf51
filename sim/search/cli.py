"""``python -m sim.search --grid GRID.yaml --slo ttft_p99=MS,tpot_p99=MS [--cost ACCEL=$/h,...]``: the highest
arrival rate every configuration of a grid serves within latency SLOs, ranked by capacity per dollar."""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from odrive.cli_errors import CLIParser, cli_main, user_input
from odrive.errors import ConfigError, RunError
from sim.search.capacity import SearchSettings
from sim.search.grid import load_search_grid
from sim.search.run import run_search
from sim.search.slo import SLO

SHOWN = ["rank", "split", "accelerator", "tensor_parallel_size", "replicas", "scheduler", "page_size", "chunk_size",
         "accelerators", "capacity_rps", "fails_at_rps", "capacity_per_accelerator", "cost_per_hour",
         "requests_per_dollar", "at_capacity_ttft_p99", "at_capacity_tpot_p99", "at_capacity_attainment", "runs",
         "status"]  # fmt: skip


def parse_costs(text: str) -> dict[str, float]:
    """``h100-80gb=3.5,a100-80gb=1.8`` ($ per accelerator-hour)."""
    costs = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        try:
            price = float(value)
        except ValueError:
            sep = ""
        if not sep or not price > 0:
            raise ConfigError(f"--cost: expected ACCELERATOR=DOLLARS_PER_HOUR (> 0), got {item!r}")
        costs[name.strip()] = price
    return costs


def build_parser() -> argparse.ArgumentParser:
    p = CLIParser(prog="python -m sim.search", description=__doc__)
    p.add_argument("--grid", type=Path, required=True, help="YAML search grid (see sim/search/grid.py)")
    p.add_argument("--slo", required=True, help="bounds in ms: ttft_p99=500,tpot_p99=50 (statistics of a run); with "
                   "--attainment, per-request bounds: ttft=500,tpot=50")  # fmt: skip
    p.add_argument("--attainment", type=float, default=None, help="share of requests that must meet every "
                   "per-request bound (e.g. 0.9, DistServe's goodput)")  # fmt: skip
    p.add_argument("--cost", default=None, help="$ per accelerator-hour: h100-80gb=3.5,a100-80gb=1.8 (rank by "
                   "requests per dollar; without: by capacity per accelerator)")  # fmt: skip
    p.add_argument("--workload", default=None, help="workload spec (default: the grid's 'workload'); its arrivals are "
                   "rescaled to each rate tried, its lengths kept")  # fmt: skip
    p.add_argument("--tolerance", type=float, default=0.05, help="stop when the failing rate is within this fraction "
                   "of the meeting one (default 0.05)")  # fmt: skip
    p.add_argument("--start-rate", type=float, default=None, help="first rate tried (default: 1 req/s per accelerator)")
    p.add_argument("--max-rate", type=float, default=1e5, help="highest rate tried (req/s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("results/search"), help="folder for search.csv/.parquet, cache/")
    p.add_argument("--workers", type=int, default=None, help="local worker processes (default: all cores)")
    p.add_argument("--scheduler-address", default=None, help="run on this Dask scheduler, e.g. tcp://host:8786")
    p.add_argument("--no-cache", action="store_true", help="re-simulate every run")
    p.add_argument("--no-progress", action="store_true")
    return p


@cli_main("python -m sim.search")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with user_input("search"):
        specs, grid_workload = load_search_grid(args.grid)
        workload = args.workload or grid_workload
        if not workload:
            raise ConfigError(f"{args.grid} names no workload: add 'workload: SPEC' or pass --workload")
        slo = SLO.parse(args.slo, args.attainment)
        costs = parse_costs(args.cost) if args.cost else None
        settings = SearchSettings(tolerance=args.tolerance, start_rate=args.start_rate, max_rate=args.max_rate)
    print(f"{args.grid}: {len(specs)} configurations; SLO: {slo.describe()}; workload: {workload}")
    table = run_search(
        specs, workload, slo, settings=settings, costs=costs, seed=args.seed, out=args.out,
        use_cache=not args.no_cache, workers=args.workers, scheduler_address=args.scheduler_address,
        progress=not args.no_progress,
    )  # fmt: skip
    shown = [c for c in SHOWN if c in table.columns and table[c].notna().any()]
    shown += [c for c in table.columns if c.startswith(("prefill.", "decode.")) and c not in shown]
    with pd.option_context("display.width", 220, "display.max_columns", 40):
        print(table[shown].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"tolerance {args.tolerance:g}: each capacity met the SLO; fails_at (<= (1 + tolerance) x capacity) did not")
    print(f"wrote {args.out / 'search.csv'}")
    failed = table[table["status"] != "ok"]
    if len(failed) == len(table):
        raise RunError(f"every configuration failed; first: {failed['error'].iloc[0]}")
    return 0
