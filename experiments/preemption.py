"""Experiment 4: the cost of preemption, recompute vs swap, across page sizes and KV-memory pressure.

Memory pressure is set by the KV pool's capacity in tokens (``num_pages = capacity // page_size + 1``),
the same for every page size, from a few sequences' worth to the whole HBM ("unconstrained"). Per run:
preemptions, the share of requests preempted, tokens prefilled again after a recompute preemption,
throughput (also relative to the unconstrained run with the same mode and page size) and latency.
Swap preemption copies a victim's pages to a host tier and back (modeled at the accelerator's host
bandwidth); recompute frees them and prefills the sequence again. Runs recompute only, with a note,
while SimConfig has no ``preemption_mode``.

    python -m experiments.preemption            # 2 page sizes x 3 capacities + unconstrained (seconds)
    python -m experiments.preemption --full     # 6 page sizes x 4 capacities + unconstrained, 2,000 requests (minutes)
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from experiments.common import (
    experiment_main,
    experiment_parser,
    has_config_field,
    log_ticks,
    note,
    ok_rows,
    policy_styles,
    print_report,
    registered,
    save_figure,
    series_legend,
    sweep_kwargs,
    table_experiment,
)
from sim.simulator import SimResult
from sim.sweep import run_sweep

NAME = "preemption"
MODES = ("recompute", "swap")
QUICK_PAGE_SIZES, FULL_PAGE_SIZES = (16, 128), (8, 16, 32, 64, 128, 256)
QUICK_CAPACITIES, FULL_CAPACITIES = (8192, 16384, 32768), (8192, 16384, 32768, 65536)
WORKLOAD = "poisson:rate={rate},n={n},prompt=lognormal(1000,0.8,16,3000),output=lognormal(250,1,8,1000)"
TABLE_COLUMNS = [
    "preemption_mode", "page_size", "kv_capacity_tokens", "pressure", "scheduler", "model", "accelerator", "rate",
    "preemptions", "preempted_fraction", "recomputed_tokens", "recomputed_fraction", "request_throughput",
    "output_token_throughput", "relative_throughput", "ttft_p99", "tpot_p99", "e2e_p50", "e2e_p99", "max_running",
    "finished", "rejected", "requests", "run_id",
]  # fmt: skip


def preemption_metrics(result: SimResult) -> dict[str, float]:
    """Recomputed tokens (prefilled beyond each finished request's uncached prompt), the preempted share of
    requests, and the sum of every steps-table column about swaps (whatever the engine records)."""
    req, steps = result.requests, result.steps
    done = req[req["status"] == "finished"]
    first_prefill = float((done["num_prompt_tokens"] - done.get("num_cached_tokens", 0)).sum())
    prefilled = float(steps["num_prefill_tokens"].sum()) if len(steps) else 0.0
    out = {
        "recomputed_tokens": max(0.0, prefilled - first_prefill),
        "recomputed_fraction": max(0.0, prefilled - first_prefill) / first_prefill if first_prefill else math.nan,
        "preempted_fraction": float((req["num_preemptions"] > 0).mean()) if len(req) else math.nan,
    }
    for column in steps.columns:
        if "swap" in column and pd.api.types.is_numeric_dtype(steps[column]):
            out[f"{column}_total"] = float(steps[column].sum())
    return out


def build_parser() -> argparse.ArgumentParser:
    p = experiment_parser(NAME, __doc__)
    p.add_argument("--page-sizes", type=int, nargs="+", default=None)
    p.add_argument("--capacities", type=int, nargs="+", default=None, help="KV pool sizes in tokens")
    p.add_argument("--schedulers", nargs="+", default=["fcfs"])
    p.add_argument("--rate", type=float, default=10.0, help="requests per second")
    p.add_argument("--requests", type=int, default=None, help="requests per run (default 300; --full: 2000)")
    p.add_argument("--accelerator", default="h100-80gb")
    p.add_argument("--model", default="llama-2-7b")
    return p


def preemption_modes() -> list[str]:
    if has_config_field("preemption_mode"):
        return list(MODES)
    note("SimConfig has no 'preemption_mode' field yet: recompute preemption only")
    return ["recompute"]


def plot(table: pd.DataFrame, path: Path, publish: Path | None = None) -> Path:
    """Throughput (relative to unconstrained), preempted share, recomputed prefill and E2E p99 vs KV capacity."""
    colors = policy_styles(sorted(table["page_size"].unique()))
    modes = {"recompute": {"linestyle": "-", "marker": "o"}, "swap": {"linestyle": "--", "marker": "s"}}
    constrained = table[table["pressure"] != "unconstrained"].sort_values("kv_capacity_tokens")
    panels = (
        ("relative_throughput", "output tokens/s vs unconstrained (x)", "throughput under memory pressure", 1),
        ("preempted_fraction", "requests preempted at least once (%)", "preempted requests", 100),
        ("recomputed_fraction", "prefill recomputed (% of prompt tokens)", "recompute cost", 100),
        ("e2e_p99", "E2E latency p99 (s)", "tail latency", 1),
    )
    fig, axes = plt.subplots(1, len(panels), figsize=(19, 5.2), squeeze=False, layout="constrained")
    for ax, (column, ylabel, title, scale) in zip(axes[0], panels, strict=True):
        for (mode, size), g in constrained.groupby(["preemption_mode", "page_size"]):
            style = {**colors[size], **modes.get(mode, {})}
            ax.plot(g["kv_capacity_tokens"], scale * g[column], **style)
        ax.set(xlabel="KV pool capacity (tokens, log scale)", ylabel=ylabel, title=title)
        log_ticks(ax, constrained["kv_capacity_tokens"])
        ax.set_ylim(bottom=0)
    legend = {f"page size {size}": {"color": style["color"]} for size, style in colors.items()}
    series_legend(fig, legend, [(f"{m} preemption", {"color": "black", **style}) for m, style in modes.items()])
    row = table.iloc[0]
    fig.suptitle(
        f"Preemption: {row['model']} on {row['accelerator']}, {row['scheduler']}, Poisson "
        f"{row['rate']:g} req/s, {int(row['requests']):,} requests (lognormal prompts ~1000, outputs ~250 tokens)"
    )
    return save_figure(fig, path, publish)


def run(args: argparse.Namespace) -> pd.DataFrame:
    return table_experiment(args, NAME, TABLE_COLUMNS, preemption_table, report)


def preemption_table(args: argparse.Namespace) -> pd.DataFrame:
    """Every (mode, page size, scheduler, pool) run, with its throughput relative to an unconstrained pool."""
    modes = preemption_modes()
    schedulers = registered("scheduler", args.schedulers)
    page_sizes = args.page_sizes or (FULL_PAGE_SIZES if args.full else QUICK_PAGE_SIZES)
    capacities = args.capacities or (FULL_CAPACITIES if args.full else QUICK_CAPACITIES)
    n = args.requests or (2000 if args.full else 300)
    base = {"workload": WORKLOAD, "rate": args.rate, "n": n, "scheduler": schedulers,
            "accelerator": args.accelerator, "model": args.model}  # fmt: skip
    if len(modes) > 1:
        base["preemption_mode"] = modes
    grid = [{**base, "page_size": ps, "num_pages": [c // ps + 1 for c in capacities] + [None]} for ps in page_sizes]
    table = ok_rows(run_sweep(grid, extra_metrics=preemption_metrics, **sweep_kwargs(args)))
    if "preemption_mode" not in table.columns:
        table["preemption_mode"] = "recompute"
    table["kv_capacity_tokens"] = (table["usable_pages"] * table["page_size"]).astype(int)
    table["pressure"] = ["unconstrained" if pd.isna(v) else "constrained" for v in table["num_pages"]]
    keys = ["preemption_mode", "page_size", "scheduler"]
    free = table.loc[table["pressure"] == "unconstrained", [*keys, "output_token_throughput"]]
    table = table.merge(free.rename(columns={"output_token_throughput": "free_throughput"}), on=keys, how="left")
    table["relative_throughput"] = table["output_token_throughput"] / table["free_throughput"]
    return table


def report(summary: pd.DataFrame, args: argparse.Namespace) -> pd.DataFrame:
    """Draw the figure and print the table."""
    figure = plot(summary, args.out / f"{NAME}.png", args.publish)
    shown = ["preemption_mode", "page_size", "kv_capacity_tokens", "preemptions", "preempted_fraction",
             "recomputed_fraction", "output_token_throughput", "relative_throughput", "e2e_p99"]  # fmt: skip
    print_report(
        summary[shown], "Preemption cost by mode, page size and KV capacity (tokens):", args.out / f"{NAME}.csv", figure
    )
    return summary


main = experiment_main("python -m experiments.preemption", build_parser, run)


if __name__ == "__main__":
    raise SystemExit(main())
