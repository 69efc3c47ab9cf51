"""Figures and printed summaries of a simulation run."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from sim.simulator import SimResult  # noqa: E402


def _binned(steps: pd.DataFrame, column: str, bins: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Duration-weighted mean of ``column`` over equal time bins (steps vary in length)."""
    t = steps["time"].to_numpy()
    if len(t) == 0:
        return np.array([]), np.array([])
    edges = np.linspace(t.min(), (steps["time"] + steps["duration"]).max(), bins + 1)
    idx = np.clip(np.searchsorted(edges, t, side="right") - 1, 0, bins - 1)
    w = steps["duration"].to_numpy()
    num = np.bincount(idx, weights=steps[column].to_numpy() * w, minlength=bins)
    den = np.bincount(idx, weights=w, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return 0.5 * (edges[1:] + edges[:-1]), num / den


def plot_run(result: SimResult, path: str | Path, title: str = "") -> Path:
    """Four panels: KV page use and fragmentation, queue depths, latency CDFs, token throughput."""
    path = Path(path)
    req, steps = result.requests, result.steps
    fig, axes = plt.subplots(2, 2, figsize=(12, 8), constrained_layout=True)
    ax = axes[0, 0]
    if len(steps):
        x, util = _binned(steps, "utilization")
        ax.plot(x, 100 * util, label="KV pages used")
        x, frag = _binned(steps, "fragmentation")
        ax.plot(x, 100 * frag, label="internal fragmentation (of allocated slots)")
    ax.set(xlabel="simulated time (s)", ylabel="%", title=f"KV cache ({result.num_pages - 1} pages)")
    ax.legend(loc="upper right")
    ax = axes[0, 1]
    if len(steps):
        for col, label in (("num_running", "running"), ("num_waiting", "waiting")):
            x, y = _binned(steps, col)
            ax.plot(x, y, label=label)
    ax.set(xlabel="simulated time (s)", ylabel="requests", title="Queue depth")
    ax.legend(loc="upper right")
    ax = axes[1, 0]
    done = req[req["status"] == "finished"]
    for col, label in (("ttft", "TTFT"), ("tpot", "TPOT"), ("e2e", "E2E latency")):
        vals = np.sort(done[col].dropna().to_numpy())
        if len(vals):
            ax.plot(vals, np.arange(1, len(vals) + 1) / len(vals), label=label)
    ax.set(xscale="log", xlabel="seconds (log scale)", ylabel="fraction of requests", title="Latency CDF")
    ax.legend(loc="lower right")
    ax = axes[1, 1]
    if len(done):
        span = done["finish_time"].max() - req["arrival_time"].min()
        bins = max(10, min(200, int(span // 10) or 10))
        first = done["first_token_time"].to_numpy()
        finish = done["finish_time"].to_numpy()
        edges = np.linspace(req["arrival_time"].min(), finish.max(), bins + 1)
        # Spread each request's output tokens uniformly over its decode interval.
        tokens = np.zeros(bins)
        counts = done["num_output_tokens"].to_numpy()
        for f, e, n in zip(first, finish, counts, strict=True):
            lo, hi = np.searchsorted(edges, [f, e], side="right") - 1
            lo, hi = min(max(lo, 0), bins - 1), min(max(hi, 0), bins - 1)
            tokens[lo : hi + 1] += n / (hi - lo + 1)
        width = edges[1] - edges[0]
        ax.plot(0.5 * (edges[1:] + edges[:-1]), tokens / width)
    ax.set(xlabel="simulated time (s)", ylabel="output tokens / s", title="Generation throughput")
    fig.suptitle(title or f"{result.config.model} on {result.config.accelerator}: "
                 f"{result.config.scheduler} / {result.config.allocator}, page {result.config.page_size}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def format_summary(summary: pd.Series) -> str:
    """A readable two-column table of the run's aggregate metrics."""
    units = {"duration_s": "s", "request_throughput": "req/s", "output_token_throughput": "tok/s"}
    rows = []
    for key, value in summary.items():
        unit = units.get(str(key), "s" if str(key).split("_")[0] in ("ttft", "tpot", "e2e") else "")
        if str(key).endswith(("utilization", "fragmentation")):
            rows.append((key, f"{100 * value:.2f} %"))
        elif float(value).is_integer() and not unit:
            rows.append((key, f"{int(value):,}"))
        else:
            rows.append((key, f"{value:,.4g} {unit}".strip()))
    width = max(len(str(k)) for k, _ in rows)
    return "\n".join(f"{str(k):<{width}}  {v}" for k, v in rows)
