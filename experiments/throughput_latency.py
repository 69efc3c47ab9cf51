"""Experiment 2: throughput and latency vs request rate for every registered scheduler, on several accelerators.

Poisson arrivals with prompt and output lengths resampled from the Azure conversation trace. Per run:
request and token throughput, TTFT / TPOT / E2E p50, p90, p99, and goodput: finished requests per second
meeting the SLO (TTFT <= ``--ttft-slo`` and TPOT <= ``--tpot-slo``; defaults 1 s and 0.1 s).

    python -m experiments.throughput_latency          # 4 rates x 200 requests (seconds)
    python -m experiments.throughput_latency --full   # 12 rates x 2,000 requests (minutes)
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from experiments.common import (
    empirical_poisson_spec,
    experiment_main,
    experiment_parser,
    ok_rows,
    plain_log_labels,
    policy_styles,
    print_report,
    registered,
    save_figure,
    series_legend,
    sweep_kwargs,
    table_experiment,
)
from sim.hardware import ACCELERATORS
from sim.sweep import run_sweep, slo_result_metrics

NAME = "throughput_latency"
QUICK_RATES = (2.0, 4.0, 8.0, 16.0)
FULL_RATES = (1.0, 2.0, 4.0, 6.0, 8.0, 10.0, 12.0, 14.0, 16.0, 20.0, 24.0, 32.0)
DEFAULT_ACCELERATORS = ("h100-80gb", "a100-80gb")
LATENCIES = [f"{m}_{q}" for m in ("ttft", "tpot", "e2e") for q in ("p50", "p90", "p99")]
TABLE_COLUMNS = [
    "accelerator", "scheduler", "rate", "model", "trace", "request_throughput", "output_token_throughput",
    "goodput", "slo_attainment", *LATENCIES, "preemptions", "finished", "rejected", "requests", "run_id",
]  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    p = experiment_parser(NAME, __doc__)
    p.add_argument("--schedulers", nargs="+", default=None, help="default: every registered scheduler")
    p.add_argument("--accelerators", nargs="+", default=list(DEFAULT_ACCELERATORS), choices=sorted(ACCELERATORS))
    p.add_argument("--rates", type=float, nargs="+", default=None, help="requests per second")
    p.add_argument("--requests", type=int, default=None, help="requests per run (default 200; --full: 2000)")
    p.add_argument(
        "--trace",
        default="conversation",
        choices=("conversation", "code"),
        help="trace whose prompt/output lengths are resampled",
    )
    p.add_argument("--model", default="llama-2-7b")
    p.add_argument("--ttft-slo", type=float, default=1.0, help="seconds")
    p.add_argument("--tpot-slo", type=float, default=0.1, help="seconds per output token")
    return p


def plot(table: pd.DataFrame, path: Path, ttft_slo: float, tpot_slo: float, publish: Path | None = None) -> Path:
    """Rows: accelerators. Columns: throughput and goodput, TTFT, TPOT, E2E latency vs offered load.
    Colour/marker = scheduler (one legend below); solid = throughput or p50, dashed = goodput or p99."""
    accelerators = list(dict.fromkeys(table["accelerator"]))
    styles = policy_styles(list(dict.fromkeys(table["scheduler"])))
    fig, axes = plt.subplots(
        len(accelerators), 4, figsize=(18, 4.0 * len(accelerators) + 0.8), squeeze=False, layout="constrained"
    )
    panels = (
        ("ttft", "TTFT", "s", 1.0, ttft_slo),
        ("tpot", "TPOT", "ms", 1e3, tpot_slo * 1e3),
        ("e2e", "E2E", "s", 1.0, None),
    )
    for r, acc in enumerate(accelerators):
        sub = table[table["accelerator"] == acc].sort_values("rate")
        ax = axes[r, 0]
        ax.plot(sub["rate"].unique(), sub["rate"].unique(), color="grey", ls=":", lw=1)
        for sched, g in sub.groupby("scheduler", sort=False):
            ax.plot(g["rate"], g["request_throughput"], "-", **styles[sched])
            ax.plot(g["rate"], g["goodput"], "--", **styles[sched])
        ax.set(xlabel="offered load (requests / s)", ylabel="finished requests / s",
               title=f"{acc}: throughput (solid), goodput (dashed)")  # fmt: skip
        for ax, (metric, name, unit, scale, slo) in zip(axes[r, 1:], panels, strict=True):
            for sched, g in sub.groupby("scheduler", sort=False):
                ax.plot(g["rate"], scale * g[f"{metric}_p50"], "-", **styles[sched])
                ax.plot(g["rate"], scale * g[f"{metric}_p99"], "--", **styles[sched])
            if slo is not None:
                ax.axhline(slo, color="red", ls=":", lw=1)
            ax.set(yscale="log", xlabel="offered load (requests / s)", ylabel=f"{name} ({unit}, log scale)",
                   title=f"{acc}: {name} p50 (solid), p99 (dashed)")  # fmt: skip
            plain_log_labels(ax)
    extra = [
        ("offered load", {"color": "grey", "ls": ":"}),
        (f"SLO: TTFT <= {ttft_slo:g} s, TPOT <= {tpot_slo * 1e3:g} ms (goodput counts requests meeting both)",
         {"color": "red", "ls": ":"}),
    ]  # fmt: skip
    series_legend(fig, styles, extra)
    row = table.iloc[0]
    fig.suptitle(
        f"Throughput and latency vs load: {row['model']}, Poisson arrivals, Azure {row['trace']} trace "
        f"lengths ({int(row['requests']):,} requests per point)"
    )
    return save_figure(fig, path, publish)


def run(args: argparse.Namespace) -> pd.DataFrame:
    return table_experiment(args, NAME, TABLE_COLUMNS, load_table, report)


def load_table(args: argparse.Namespace) -> pd.DataFrame:
    """Every (accelerator, scheduler, rate) run with its SLO metrics."""
    schedulers = registered("scheduler", args.schedulers)
    rates = args.rates or (FULL_RATES if args.full else QUICK_RATES)
    n = args.requests or (2000 if args.full else 200)
    grid = {  # the first key varies slowest: rows come grouped by accelerator, then scheduler
        "accelerator": args.accelerators, "scheduler": schedulers, "model": args.model,
        "workload": empirical_poisson_spec(args.trace, "{rate}", n), "rate": list(rates),
    }  # fmt: skip
    slo = functools.partial(slo_result_metrics, ttft_slo=args.ttft_slo, tpot_slo=args.tpot_slo)
    table = ok_rows(run_sweep(grid, extra_metrics=slo, **sweep_kwargs(args)))
    table["trace"] = args.trace
    return table


def report(summary: pd.DataFrame, args: argparse.Namespace) -> pd.DataFrame:
    """Draw the figure and print the table."""
    figure = plot(summary, args.out / f"{NAME}.png", args.ttft_slo, args.tpot_slo, args.publish)
    shown = ["accelerator", "scheduler", "rate", "request_throughput", "goodput", "ttft_p50", "ttft_p99", "tpot_p50",
             "tpot_p99", "e2e_p99"]  # fmt: skip
    print_report(
        summary[shown],
        "Throughput (req/s), goodput (req/s) and latency (s) by offered load:",
        args.out / f"{NAME}.csv",
        figure,
    )
    return summary


main = experiment_main("python -m experiments.throughput_latency", build_parser, run)


if __name__ == "__main__":
    raise SystemExit(main())
