"""The cluster figure and printed tables."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from sim.cluster.simulator import ClusterResult  # noqa: E402
from sim.report import format_summary  # noqa: E402

MAX_CDF_POINTS = 2000

PER_REPLICA_COLUMNS = [
    "replica", "pool", "accelerator", "requests", "finished", "prefilled", "prefill_ttft_p99", "ttft_p50", "ttft_p99",
    "tpot_p50", "e2e_p99", "mean_page_utilization", "preemptions", "engine_step_calls",
]  # fmt: skip


def _cdf(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A sorted sample of at most MAX_CDF_POINTS quantiles (enough for a plot of millions of values)."""
    values = np.sort(values[np.isfinite(values)])
    if len(values) > MAX_CDF_POINTS:
        values = values[np.linspace(0, len(values) - 1, MAX_CDF_POINTS).astype(np.int64)]
    return values, np.linspace(0, 1, len(values), endpoint=False) + 1 / max(len(values), 1)


def plot_cluster(result: ClusterResult, path: str | Path, title: str = "") -> Path:
    """Four panels: requests per replica, TTFT per replica, cluster latency CDFs, finished requests per second."""
    path = Path(path)
    per = result.replicas
    req = result.requests(["replica", "status", "arrival_time", "finish_time", "ttft", "tpot", "e2e"])
    done = req[req["status"] == "finished"]
    fig, axes = plt.subplots(2, 2, figsize=(13, 8), constrained_layout=True)
    ax = axes[0, 0]
    ax.bar(per["replica"], per["requests"], color="tab:blue", label="routed")
    ax.bar(per["replica"], per["requests"] - per["finished"], bottom=per["finished"], color="tab:red",
           label="not finished (rejected/aborted)")  # fmt: skip
    ax.set(xlabel="replica", ylabel="requests", title=f"Load per replica ({result.router})")
    ax.legend(loc="lower right")
    ax = axes[0, 1]
    ax.plot(per["replica"], per["ttft_p50"], "o-", label="TTFT p50")
    ax.plot(per["replica"], per["ttft_p99"], "s-", label="TTFT p99")
    ax.set(xlabel="replica", ylabel="seconds", yscale="log", title="Time to first token per replica")
    ax.legend(loc="upper right")
    ax = axes[1, 0]
    for col, label in (("ttft", "TTFT"), ("tpot", "TPOT"), ("e2e", "E2E latency")):
        x, y = _cdf(done[col].to_numpy(dtype=np.float64))
        if len(x):
            ax.plot(x, y, label=label)
    ax.set(xscale="log", xlabel="seconds (log scale)", ylabel="fraction of requests", title="Cluster latency CDF")
    ax.legend(loc="lower right")
    ax = axes[1, 1]
    if len(done):
        finish = done["finish_time"].to_numpy()
        edges = np.linspace(req["arrival_time"].min(), finish.max(), 201)
        counts, _ = np.histogram(finish, edges)
        arrivals, _ = np.histogram(req["arrival_time"].to_numpy(), edges)
        width = edges[1] - edges[0]
        mid = 0.5 * (edges[1:] + edges[:-1])
        ax.plot(mid, arrivals / width, label="arrivals", alpha=0.7)
        ax.plot(mid, counts / width, label="finished")
        ax.legend(loc="upper right")
    ax.set(xlabel="simulated time (s)", ylabel="requests / s", title="Cluster throughput")
    cfg = result.configs[0]
    kinds = sorted({(c.accelerator, c.model) for c in result.configs})
    fig.suptitle(title or f"{len(result.configs)} replicas ({', '.join(f'{a}/{m}' for a, m in kinds)}), "
                 f"router {result.router}, scheduler {cfg.scheduler}")  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def format_cluster(result: ClusterResult, max_rows: int = 16) -> str:
    """The cluster summary, then per-replica rows (the first and last ones if there are many)."""
    per = result.replicas[[c for c in PER_REPLICA_COLUMNS if c in result.replicas.columns]]
    if len(per) > max_rows:
        half = max_rows // 2
        per = pd.concat([per.head(half), per.tail(half)])
    with pd.option_context("display.width", 160, "display.max_columns", 20, "display.float_format", "{:.4g}".format):
        table = per.to_string(index=False)
    notes = "".join(f"\nnote: {n}" for n in result.notes)
    return f"{format_summary(result.summary)}\n\nper replica:\n{table}{notes}"
