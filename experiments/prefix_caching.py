"""Experiment 3: prefix-cache hit rate and throughput / latency gain on shared-prefix workloads.

Two workloads with token ids (``sim/workloads/shared_prefix.py``): requests behind one of a few shared
system prompts, and multi-turn conversations whose next prompt repeats the conversation so far. Each runs
on the ``prefix-cache`` allocator and on the ``free-list`` baseline at several request rates; every
registered cache-related scheduler (``fcfs``, ``cache-aware``) is tried. Hit rate = prompt tokens served
from the cache / prompt tokens; gains compare each run with the same scheduler and load on ``free-list``.

    python -m experiments.prefix_caching            # 2 rates, small workloads (seconds)
    python -m experiments.prefix_caching --full     # more rates and system-prompt lengths (minutes)
    python -m experiments.prefix_caching --trace mooncake [--full]  # a real trace (prefix_caching_mooncake.py)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from experiments.common import (
    MARKERS,
    experiment_main,
    experiment_parser,
    log_ticks,
    ok_rows,
    plain_log_labels,
    print_report,
    registered,
    save_figure,
    series_legend,
    sweep_kwargs,
    table_experiment,
)
from sim.sweep import run_sweep
from sim.workloads import WORKLOAD_KINDS  # its import registers the shared-prefix: and multi-turn: kinds

NAME = "prefix_caching"
CACHE_ALLOCATOR, BASELINE_ALLOCATOR = "prefix-cache", "free-list"
SCHEDULERS_OF_INTEREST = ("fcfs", "cache-aware")
# name -> (workload template, quick rates, full rates, quick params, full params); rates are requests/s for
# shared-prefix and new conversations/s for multi-turn.
WORKLOADS = {
    "shared system prompt": (
        "shared-prefix:rate={rate},n={n},groups=4,prefix={prefix},suffix=lognormal(256,1,16,2048),"
        "output=uniform(16,256)",
        [8.0, 32.0],
        [4.0, 8.0, 16.0, 32.0, 64.0],
        {"n": [200], "prefix": [1024]},
        {"n": [2000], "prefix": [256, 1024, 4096]},
    ),
    "multi-turn": (
        "multi-turn:rate={rate},n={n},turns=5,think=2,user=lognormal(128,1,8,1024),output=lognormal(128,1,8,512),"
        "system={prefix}",
        [1.0, 4.0],
        [0.5, 1.0, 2.0, 4.0, 8.0],
        {"n": [40], "prefix": [512]},
        {"n": [400], "prefix": [512]},
    ),
}
KINDS = {"shared system prompt": "shared-prefix", "multi-turn": "multi-turn"}
TABLE_COLUMNS = [
    "workload_name", "prefix", "rate", "scheduler", "allocator", "model", "accelerator", "page_size",
    "cached_token_fraction", "request_throughput", "output_token_throughput", "ttft_p50", "ttft_p99", "e2e_p50",
    "throughput_gain", "ttft_p50_speedup", "finished", "requests", "run_id",
]  # fmt: skip


def available_workloads() -> list[str]:
    """The shared-prefix workload names (``sim.workloads`` registers their spec kinds)."""
    return [name for name, kind in KINDS.items() if kind in WORKLOAD_KINDS]


def build_parser() -> argparse.ArgumentParser:
    p = experiment_parser(NAME, __doc__)
    p.add_argument(
        "--schedulers", nargs="+", default=None, help=f"default: those of {SCHEDULERS_OF_INTEREST} registered now"
    )
    p.add_argument("--accelerator", default="h100-80gb")
    p.add_argument("--model", default="llama-2-7b")
    p.add_argument(
        "--trace",
        choices=["mooncake"],
        default=None,
        help="study a real trace's sharing instead: mooncake (KV pool and page size, then cluster routers; "
        "see experiments/prefix_caching_mooncake.py; output in results/prefix_caching_mooncake)",
    )
    return p


def with_gains(table: pd.DataFrame) -> pd.DataFrame:
    """Add ``throughput_gain`` and ``ttft_p50_speedup`` of each run over the baseline-allocator run with the
    same workload and scheduler (1.0 for the baseline itself)."""
    keys = ["workload", "scheduler"]
    base = table.loc[table["allocator"] == BASELINE_ALLOCATOR, [*keys, "output_token_throughput", "ttft_p50"]]
    base = base.rename(columns={"output_token_throughput": "base_throughput", "ttft_p50": "base_ttft_p50"})
    merged = table.merge(base, on=keys, how="left")  # keeps the table's row order
    merged["throughput_gain"] = merged["output_token_throughput"] / merged["base_throughput"]
    merged["ttft_p50_speedup"] = merged["base_ttft_p50"] / merged["ttft_p50"]
    return merged.drop(columns=["base_throughput", "base_ttft_p50"])


def plot(table: pd.DataFrame, path: Path, publish: Path | None = None) -> Path:
    """Rows: workloads. Columns: hit rate, output-token throughput gain, TTFT p50 — each vs request rate.
    Colour = shared-prefix length, marker = scheduler, solid = prefix-cache, dashed = the free-list baseline."""
    names = list(dict.fromkeys(table["workload_name"]))
    colors = {p: plt.cm.tab10(i % 10) for i, p in enumerate(sorted(table["prefix"].unique()))}
    markers = {s: m for s, m in zip(dict.fromkeys(table["scheduler"]), MARKERS, strict=False)}
    lines = {CACHE_ALLOCATOR: "-", BASELINE_ALLOCATOR: "--"}
    fig, axes = plt.subplots(len(names), 3, figsize=(17, 4.2 * len(names) + 0.6), squeeze=False, layout="constrained")
    for r, name in enumerate(names):
        sub = table[table["workload_name"] == name].sort_values("rate")
        unit = "new conversations / s" if name == "multi-turn" else "requests / s"
        cached = sub[sub["allocator"] == CACHE_ALLOCATOR]
        for ax, (column, ylabel, title, frame) in zip(axes[r], (
            ("cached_token_fraction", "prompt tokens served from cache (%)", "prefix-cache hit rate", cached),
            ("throughput_gain", f"output tokens/s vs {BASELINE_ALLOCATOR} (x)", "throughput gain", cached),
            ("ttft_p50", "TTFT p50 (ms, log scale)", "time to first token", sub),
        ), strict=True):  # fmt: skip
            scale = 100 if column == "cached_token_fraction" else 1e3 if column == "ttft_p50" else 1
            for (prefix, sched, alloc), g in frame.groupby(["prefix", "scheduler", "allocator"], sort=False):
                ax.plot(g["rate"], scale * g[column], lines[alloc], color=colors[prefix], marker=markers[sched],
                        markerfacecolor="none")  # fmt: skip
            ax.set(xlabel=f"arrival rate ({unit}, log scale)", ylabel=ylabel, title=f"{name}: {title}")
            log_ticks(ax, sub["rate"])
            if column == "cached_token_fraction":
                ax.set_ylim(0, 100)
            elif column == "throughput_gain":
                ax.axhline(1, color="grey", ls=":", lw=1)
                ax.set_ylim(min(0.9, float(frame[column].min()) - 0.05), max(1.1, float(frame[column].max()) + 0.05))
                ax.ticklabel_format(axis="y", useOffset=False)
            else:
                ax.set_yscale("log")
                plain_log_labels(ax)
    legend = {f"shared prefix {p} tokens": {"color": c} for p, c in colors.items()}
    legend.update({f"scheduler {s}": {"color": "black", "marker": m, "markerfacecolor": "none", "ls": ""}
                   for s, m in markers.items()})  # fmt: skip
    extra = [(f"{a}{' (baseline)' if a == BASELINE_ALLOCATOR else ''}", {"color": "black", "ls": ls})
             for a, ls in lines.items()]  # fmt: skip
    series_legend(fig, legend, extra)
    row = table.iloc[0]
    fig.suptitle(f"Prefix caching: {row['model']} on {row['accelerator']}, page size {row['page_size']}")
    return save_figure(fig, path, publish)


def run(args: argparse.Namespace) -> pd.DataFrame | None:
    if args.trace == "mooncake":
        from experiments import prefix_caching_mooncake as mooncake

        if args.out == build_parser().get_default("out"):
            args.out = args.out.parent / mooncake.NAME
        return mooncake.run(args)[0]
    return table_experiment(args, NAME, TABLE_COLUMNS, gains_table, report)


def gains_table(args: argparse.Namespace) -> pd.DataFrame:
    """Every (workload, rate, allocator, scheduler) run, with the prefix cache's gains over the baseline."""
    names = available_workloads()
    schedulers = registered("scheduler", args.schedulers or [s for s in SCHEDULERS_OF_INTEREST])
    grid = []
    for name in names:
        template, quick_rates, full_rates, quick, full = WORKLOADS[name]
        grid.append({
            "workload": template, "rate": full_rates if args.full else quick_rates, **(full if args.full else quick),
            "allocator": [BASELINE_ALLOCATOR, CACHE_ALLOCATOR], "scheduler": schedulers,
            "accelerator": args.accelerator, "model": args.model,
        })  # fmt: skip
    table = ok_rows(run_sweep(grid, **sweep_kwargs(args)))
    kind_names = {kind: name for name, kind in KINDS.items()}
    table["workload_name"] = [kind_names[w.split(":", 1)[0]] for w in table["workload"]]
    return with_gains(table)


def report(summary: pd.DataFrame, args: argparse.Namespace) -> pd.DataFrame:
    """Draw the figure and print the table."""
    figure = plot(summary, args.out / f"{NAME}.png", args.publish)
    shown = [
        c for c in summary.columns if c not in ("model", "accelerator", "page_size", "run_id", "requests", "finished")
    ]
    print_report(
        summary[shown],
        "Prefix caching (rates in requests/s; multi-turn: new conversations/s):",
        args.out / f"{NAME}.csv",
        figure,
    )
    return summary


main = experiment_main("python -m experiments.prefix_caching", build_parser, run)


if __name__ == "__main__":
    raise SystemExit(main())
