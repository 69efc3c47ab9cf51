"""Experiment: goodput per accelerator of colocated vs disaggregated (prefill:decode) clusters of equal size.

DistServe's metric: the highest request rate at which ``--attainment`` (90 %) of requests meet both SLOs (TTFT <=
``--ttft-slo``, TPOT <= each of ``--tpot-slo``), divided by the accelerators the cluster occupies. For each Azure trace
(conversation and code: Poisson arrivals, as DistServe, with prompt and output lengths resampled from the trace) and
a cluster of ``--accelerators`` single-device replicas: colocated replicas (FCFS, and Sarathi-style chunked prefill)
against every prefill:decode split (FCFS in both pools, the default K/V link). Each goodput comes from
``sim.search``'s bisection on the arrival rate (tolerance 5 %), every run cached.

    python -m experiments.disaggregation          # 2 accelerators, 200 requests (seconds)
    python -m experiments.disaggregation --full   # 8 accelerators, 2,000 requests (minutes)
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from experiments.common import (
    ExperimentError,
    empirical_poisson_spec,
    experiment_main,
    experiment_parser,
    note,
    print_table,
    save_figure,
    table_experiment,
)
from sim.cluster.spec import ClusterSpec
from sim.config import SimConfig
from sim.hardware import ACCELERATORS
from sim.search import SLO, SearchSettings, run_search

NAME = "disaggregation"
TRACES = ("conversation", "code")
TABLE_COLUMNS = [
    "trace", "config", "split", "scheduler", "accelerators", "capacity_rps", "fails_at_rps", "goodput_per_accelerator",
    "at_capacity_attainment", "at_capacity_ttft_p99", "at_capacity_tpot_p99", "model", "accelerator", "requests",
    "ttft_slo", "tpot_slo", "attainment", "status",
]  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    p = experiment_parser(NAME, __doc__)
    p.add_argument("--traces", nargs="+", default=list(TRACES), choices=TRACES)
    p.add_argument("--accelerators", type=int, default=None, help="accelerators per cluster (default 2; --full: 8)")
    p.add_argument("--requests", type=int, default=None, help="requests per run (default 200; --full: 2000)")
    p.add_argument("--model", default="llama-3-8b")
    p.add_argument("--accelerator", default="h100-80gb", choices=sorted(ACCELERATORS))
    p.add_argument("--ttft-slo", type=float, default=0.5, help="seconds (default 0.5)")
    p.add_argument("--tpot-slo", type=float, nargs="+", default=[0.05, 0.025],
                   help="seconds per output token; each value is its own search (default 0.05 0.025)")  # fmt: skip
    p.add_argument("--attainment", type=float, default=0.9, help="share of requests meeting both (default 0.9)")
    return p


def configurations(model: str, accelerator: str, accelerators: int) -> dict[str, ClusterSpec]:
    """Colocated (FCFS, Sarathi) and every prefill:decode split of ``accelerators`` single-device replicas."""
    base = SimConfig(model=model, accelerator=accelerator, record_steps=False)
    configs = {
        "colocated fcfs": ClusterSpec(base, replicas=accelerators),
        "colocated sarathi": ClusterSpec(dataclasses.replace(base, scheduler="sarathi"), replicas=accelerators),
    }
    for p in range(1, accelerators):
        configs[f"{p}:{accelerators - p}"] = ClusterSpec(base, replicas=accelerators, prefill_replicas=p)
    return configs


def plot(table: pd.DataFrame, path: Path, publish: Path | None = None) -> Path:
    """A panel per (TPOT SLO, trace): goodput per accelerator of each configuration (colocated first, then P:D)."""
    traces = list(dict.fromkeys(table["trace"]))
    slos = list(dict.fromkeys(table["tpot_slo"]))
    fig, axes = plt.subplots(len(slos), len(traces), figsize=(6.5 * len(traces), 4.2 * len(slos) + 0.6),
                             squeeze=False, layout="constrained")  # fmt: skip
    for ax, (slo, trace) in zip(axes.flat, [(s, t) for s in slos for t in traces], strict=True):
        sub = table[(table["trace"] == trace) & (table["tpot_slo"] == slo)]
        colours = ["tab:grey" if c.startswith("colocated") else "tab:blue" for c in sub["config"]]
        bars = ax.bar(range(len(sub)), sub["goodput_per_accelerator"], color=colours)
        best = sub["goodput_per_accelerator"].max()
        for bar, value in zip(bars, sub["goodput_per_accelerator"], strict=True):
            ax.annotate(f"{value:.2g}", (bar.get_x() + bar.get_width() / 2, value), ha="center", va="bottom",
                        fontsize=8, fontweight="bold" if value == best else "normal")  # fmt: skip
        ax.set_xticks(range(len(sub)), [c.replace("colocated ", "colocated\n") for c in sub["config"]], fontsize=8)
        ax.set(xlabel="configuration (P:D = prefill:decode replicas)", ylabel="goodput per accelerator (req/s)",
               title=f"Azure {trace} trace, TPOT <= {slo * 1e3:g} ms")  # fmt: skip
    row = table.iloc[0]
    fig.suptitle(
        f"Goodput per accelerator ({row['attainment']:.0%} of requests with TTFT <= {row['ttft_slo']:g} s and the "
        f"TPOT bound): {row['model']} on {int(row['accelerators'])} x {row['accelerator']}, "
        f"{int(row['requests']):,} requests per run"
    )
    return save_figure(fig, path, publish)


def run(args: argparse.Namespace) -> pd.DataFrame:
    return table_experiment(args, NAME, TABLE_COLUMNS, goodput_table, report)


def goodput_table(args: argparse.Namespace) -> pd.DataFrame:
    """Each configuration's goodput search, per TPOT SLO and trace."""
    accelerators = args.accelerators or (8 if args.full else 2)
    n = args.requests or (2000 if args.full else 200)
    configs = configurations(args.model, args.accelerator, accelerators)
    frames = []
    for tpot_slo, trace in [(s, t) for s in args.tpot_slo for t in args.traces]:
        slo = SLO((("ttft", args.ttft_slo), ("tpot", tpot_slo)), args.attainment)
        table = run_search(
            list(configs.values()), empirical_poisson_spec(trace, 1, n), slo, settings=SearchSettings(tolerance=0.05),
            cache_dir=args.out / "cache", use_cache=not args.no_cache, workers=args.workers,
            scheduler_address=args.scheduler_address, progress=not args.no_progress,
        )  # fmt: skip
        names = {(spec.split(), spec.replica.scheduler): name for name, spec in configs.items()}
        table["config"] = [names[key] for key in zip(table["split"], table["scheduler"], strict=True)]
        for _, bad in table[table["status"] != "ok"].iterrows():
            note(f"{trace} {bad['config']} failed: {bad['error']}")
        table["trace"], table["tpot_slo"] = trace, tpot_slo
        frames.append(table)
    table = pd.concat(frames, ignore_index=True)
    if (table["status"] != "ok").all():
        raise ExperimentError(f"every search failed; first: {table['error'].iloc[0]}")
    order = {name: k for k, name in enumerate([*args.traces, *configs])}
    table = table.sort_values(["trace", "config"], key=lambda column: column.map(order), kind="stable")
    table = table.sort_values("tpot_slo", ascending=False, kind="stable")
    table["goodput_per_accelerator"] = table["capacity_rps"] / table["accelerators"]
    table["requests"], table["ttft_slo"] = n, args.ttft_slo
    table["attainment"] = args.attainment
    return table.reset_index(drop=True)


def report(summary: pd.DataFrame, args: argparse.Namespace) -> pd.DataFrame:
    """Draw the figure and print the table (with each trace's best disaggregated split against colocated)."""
    figure = plot(summary, args.out / f"{NAME}.png", args.publish)
    shown = ["tpot_slo", "trace", "config", "accelerators", "capacity_rps", "goodput_per_accelerator",
             "at_capacity_attainment", "at_capacity_ttft_p99", "at_capacity_tpot_p99"]  # fmt: skip
    print_table(summary[[c for c in shown if c in summary.columns]], "Goodput (req/s) per configuration:")
    for (tpot_slo, trace), sub in summary.groupby(["tpot_slo", "trace"], sort=False):
        colocated = sub[sub["split"] == "colocated"]["goodput_per_accelerator"].max()
        split = sub[sub["split"] != "colocated"]
        if len(split) and colocated > 0:
            best = split.loc[split["goodput_per_accelerator"].idxmax()]
            ratio = best["goodput_per_accelerator"] / colocated
            print(f"TPOT <= {tpot_slo * 1e3:g} ms, {trace}: best split {best['config']} "
                  f"{best['goodput_per_accelerator']:.3g} req/s per accelerator vs best colocated {colocated:.3g} "
                  f"(x{ratio:.2f})")  # fmt: skip
    print(f"\nwrote {args.out / f'{NAME}.csv'}, {figure}")
    return summary


main = experiment_main("python -m experiments.disaggregation", build_parser, run)


if __name__ == "__main__":
    raise SystemExit(main())
