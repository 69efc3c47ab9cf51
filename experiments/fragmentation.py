"""Experiment 1: KV-cache waste vs page size and allocator on the Azure conversation and code traces.

Reproduces vLLM's (SOSP 2023) finding in the simulator: reserving contiguous space for each sequence's
maximum length wastes most of the KV memory, while paging wastes only the tail of each sequence's last
page (under 4% at page size 16). Waste is time-weighted over the steps: allocated (reserved) slots
holding no token / allocated slots. Also reports pool utilization over time and how many sequences run
at once. Arrivals are replayed ``--time-scale`` times faster than the trace (default 10x) so the KV pool
fills up: the regime where waste costs batch size.

    python -m experiments.fragmentation            # 300 requests per trace, 5 page sizes (seconds)
    python -m experiments.fragmentation --full     # whole traces, page sizes 1..256 (minutes)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from experiments.common import (
    DEFAULT_ALLOCATORS,
    TRACES,
    allocator_entries,
    binned,
    experiment_main,
    experiment_parser,
    log_ticks,
    note,
    ok_rows,
    policy_label,
    policy_styles,
    print_report,
    read_table,
    registered,
    save_figure,
    series_legend,
    sweep_kwargs,
    trace_spec,
    write_table,
)
from odrive.allocators import ALLOCATORS
from sim.sweep import Grid, ResultCache, expand_grid, run_sweep
from sim.workloads import parse_workload

NAME = "fragmentation"
QUICK_PAGE_SIZES = (1, 4, 16, 64, 256)
FULL_PAGE_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
HEADLINE_PAGE_SIZE = 16
# Allocators compared when registered (the first is the paged baseline that exists today).
ALLOCATORS_OF_INTEREST = (*DEFAULT_ALLOCATORS, "free-list-lifo", "buddy", "contiguous")
ALLOCATOR_OPTIONS = {"contiguous": {"reservation": ["max", "pow2", "oracle"]}}
TABLE_COLUMNS = [
    "trace", "policy", "allocator", "page_size", "model", "accelerator", "time_scale", "kv_waste",
    "kv_token_utilization", "kv_allocated_fraction", "max_running", "mean_running", "peak_pages_used",
    "usable_pages", "request_throughput", "output_token_throughput", "ttft_p50", "preemptions", "finished",
    "requests", "run_id",
]  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    p = experiment_parser(NAME, __doc__)
    p.add_argument(
        "--allocators",
        nargs="+",
        default=None,
        help=f"allocator names (default: those of {ALLOCATORS_OF_INTEREST} registered now)",
    )
    p.add_argument("--page-sizes", type=int, nargs="+", default=None)
    p.add_argument("--max-requests", type=int, default=None, help="requests per trace (default 300; --full: all)")
    p.add_argument("--time-scale", type=float, default=0.1, help="multiply trace arrival times (0.1 = 10x rate)")
    p.add_argument("--accelerator", default="a100-80gb")
    p.add_argument("--model", default="llama-2-7b")
    return p


def max_sequence_length(spec: str) -> int:
    """The smallest power of two >= the longest prompt + output of a workload: the max model length a
    deployment serving it needs, and what a max-length reservation reserves."""
    w = parse_workload(spec)
    return 1 << int(max(w.prompt_lens + w.output_lens) - 1).bit_length()


def _grid(args: argparse.Namespace, page_sizes: list[int], allocators: list[str]) -> list[dict]:
    n = args.max_requests or (None if args.full else 300)
    entries = []
    for trace in TRACES:
        spec = trace_spec(trace, time_scale=args.time_scale, max_requests=n)
        options = {"contiguous": {**ALLOCATOR_OPTIONS["contiguous"], "reserve_tokens": max_sequence_length(spec)}}
        base = {"workload": spec, "page_size": page_sizes, "accelerator": args.accelerator, "model": args.model}
        entries += [{**base, **entry} for entry in allocator_entries(allocators, options)]
    return entries


def _label(table: pd.DataFrame) -> pd.DataFrame:
    by_spec = {trace_spec(t, time_scale=None): t for t in TRACES}
    table["trace"] = [next(t for s, t in by_spec.items() if w.startswith(s)) for w in table["workload"]]
    table["policy"] = table.apply(policy_label, axis=1, hide=("reserve_tokens",))
    return table


def utilization_over_time(table: pd.DataFrame, cache: ResultCache, bins: int = 120) -> pd.DataFrame:
    """Long table: per run, binned simulated time vs the pool fraction allocated and holding tokens."""
    frames = []
    for _, row in table.iterrows():
        _, steps = cache.tables(row["run_id"])
        pool = (steps["pages_used"] + steps["pages_free"]) * row["page_size"]
        x, allocated = binned(steps, steps["allocated_slots"] / pool, bins)
        _, tokens = binned(steps, steps["used_slots"] / pool, bins)
        _, running = binned(steps, "num_running", bins)
        frames.append(pd.DataFrame({
            "trace": row["trace"], "policy": row["policy"], "page_size": row["page_size"], "time_s": x,
            "allocated_fraction": allocated, "token_fraction": tokens, "running": running,
        }))  # fmt: skip
    return pd.concat(frames, ignore_index=True).dropna(subset=["allocated_fraction"])


def plot(table: pd.DataFrame, over_time: pd.DataFrame, path: Path, publish: Path | None = None) -> Path:
    """Per trace (rows): waste vs page size, pool use over time at page 16, concurrent sequences vs page size.
    Colour/marker = allocator (one legend below)."""
    traces = [t for t in TRACES if t in set(table["trace"])]
    styles = policy_styles(list(dict.fromkeys(table["policy"])))
    fig, axes = plt.subplots(len(traces), 3, figsize=(17, 4.4 * len(traces) + 0.6), squeeze=False, layout="constrained")
    for r, trace in enumerate(traces):
        sub = table[table["trace"] == trace].sort_values("page_size")
        sizes = sorted(sub["page_size"].unique())
        ax = axes[r, 0]
        for policy, g in sub.groupby("policy", sort=False):
            ax.plot(g["page_size"], 100 * g["kv_waste"], "-", **styles[policy])
        ax.axhline(4, color="grey", ls=":", lw=1)
        ax.set(xlabel="page size (tokens per page, log scale)", ylabel="KV waste (% of allocated slots)",
               title=f"{trace} ({int(sub['requests'].iloc[0]):,} requests): KV waste vs page size")  # fmt: skip
        log_ticks(ax, sizes)
        ax.set_ylim(0, max(5.0, 105 * float(sub["kv_waste"].max())))
        ax = axes[r, 1]
        ot = over_time[(over_time["trace"] == trace) & (over_time["page_size"] == HEADLINE_PAGE_SIZE)]
        for policy, g in ot.groupby("policy", sort=False):
            ax.plot(g["time_s"], 100 * g["allocated_fraction"], color=styles[policy]["color"])
            ax.plot(g["time_s"], 100 * g["token_fraction"], color=styles[policy]["color"], ls="--")
        ax.set(xlabel="simulated time (s)", ylabel="% of KV pool slots", ylim=(0, 105),
               title=f"{trace}: KV pool use over time, page size {HEADLINE_PAGE_SIZE}")  # fmt: skip
        ax = axes[r, 2]
        for policy, g in sub.groupby("policy", sort=False):
            ax.plot(g["page_size"], g["max_running"], "-", **styles[policy])
            ax.plot(g["page_size"], g["mean_running"], "--", alpha=0.8, **styles[policy])
        ax.set(xlabel="page size (tokens per page, log scale)", ylabel="sequences holding KV state",
               title=f"{trace}: concurrent sequences")  # fmt: skip
        log_ticks(ax, sizes)
        ax.set_ylim(bottom=0)
    extra = [
        ("solid: slots allocated / peak sequences", {"color": "black", "ls": "-"}),
        ("dashed: slots holding tokens / mean sequences", {"color": "black", "ls": "--"}),
        ("4%: vLLM's bound on paged waste", {"color": "grey", "ls": ":"}),
    ]
    series_legend(fig, styles, extra)
    row = table.iloc[0]
    fig.suptitle(
        f"KV-cache fragmentation: {row['model']} on {row['accelerator']}, Azure 2023 LLM traces replayed "
        f"{1 / row['time_scale']:g}x faster; waste = allocated slots holding no token, time-weighted"
    )
    return save_figure(fig, path, publish)


def run(args: argparse.Namespace) -> pd.DataFrame:
    if args.replot:
        return report(read_table(args.out / f"{NAME}.csv"), read_table(args.out / "utilization_over_time.csv"), args)
    page_sizes = sorted(args.page_sizes or (FULL_PAGE_SIZES if args.full else QUICK_PAGE_SIZES))
    if HEADLINE_PAGE_SIZE not in page_sizes:
        page_sizes = sorted({*page_sizes, HEADLINE_PAGE_SIZE})
    wanted = args.allocators or [a for a in ALLOCATORS_OF_INTEREST if a in ALLOCATORS.names()]
    allocators = registered("allocator", wanted)
    if "contiguous" not in allocators:
        note("allocator 'contiguous' (max-length reservation) not in this run: paged allocators only")
    grid = expand_grid(_grid(args, page_sizes, allocators))
    kw = sweep_kwargs(args)
    headline = [p for p in grid.points if p.config.page_size == HEADLINE_PAGE_SIZE]
    run_sweep(Grid(tuple(headline)), keep_tables=True, **kw)  # tables for the over-time panel
    table = _label(ok_rows(run_sweep(grid, **kw)))
    out: Path = args.out
    table["time_scale"] = args.time_scale
    summary = table[[c for c in TABLE_COLUMNS if c in table.columns]]
    write_table(summary, out / f"{NAME}.csv")
    over_time = utilization_over_time(table[table["page_size"] == HEADLINE_PAGE_SIZE], ResultCache(kw["cache_dir"]))
    write_table(over_time, out / "utilization_over_time.csv")
    return report(summary, over_time, args)


def report(summary: pd.DataFrame, over_time: pd.DataFrame, args: argparse.Namespace) -> pd.DataFrame:
    """Draw the figure and print the waste table."""
    figure = plot(summary, over_time, args.out / f"{NAME}.png", args.publish)
    shown = summary.pivot_table(index=["trace", "policy"], columns="page_size", values="kv_waste", sort=False)
    title = "KV waste (% of allocated slots, time-weighted) by page size:"
    print_report((100 * shown).round(2).reset_index(), title, args.out / f"{NAME}.csv",
                 args.out / "utilization_over_time.csv", figure)  # fmt: skip
    return summary


main = experiment_main("python -m experiments.fragmentation", build_parser, run)


if __name__ == "__main__":
    raise SystemExit(main())
