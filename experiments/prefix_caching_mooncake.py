"""Prefix caching on a real trace: the Mooncake conversation trace (Kimi, FAST'25), whose hash ids say which
prompt blocks repeat (``python -m experiments.prefix_caching --trace mooncake``).

1. One replica, the ``prefix-cache`` allocator: the share of prompt tokens served from the cache and TTFT as the KV
   pool grows from about one accelerator's HBM to a pool of tens of millions of tokens (what a disaggregated KV
   store such as Mooncake's offers; modeled as if it were HBM: no transfer cost), for several page sizes, against
   the ``free-list`` baseline; the trace is replayed ``SINGLE_TIME_SCALE`` times slower so one replica keeps up.
   The line to reach: the share of prompt tokens the trace's hash ids say an unbounded cache serves.
2. The trace at its own pace on a cluster of replicas with HBM-sized pools behind ``round-robin``,
   ``least-outstanding`` and ``prefix-affinity`` (keyed on each prompt's first ``AFFINITY_TOKENS`` tokens: every
   prompt starts with the same 512-token block, so a shorter key sends everything to one replica): hit rate,
   TTFT p50/p99 and load balance.

Without ``--full`` a slice of the trace (a minute or two); ``--full`` the whole hour (about 50 minutes on 2 busy
cores). Tables ``pool.csv`` and ``cluster.csv`` and the figure ``prefix_caching_mooncake.png`` go to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import lzma
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from experiments.common import (
    MARKERS,
    REPO_ROOT,
    log_ticks,
    ok_rows,
    plain_log_labels,
    print_table,
    read_table,
    save_figure,
    sweep_kwargs,
    write_table,
)
from sim.cluster import simulate_cluster
from sim.config import SimConfig
from sim.sweep import run_sweep
from sim.workloads import load_trace

NAME = "prefix_caching_mooncake"
TRACE = REPO_ROOT / "data" / "traces" / "mooncake_conversation.jsonl.xz"
MODEL, ACCELERATOR = "llama-3-8b", "h100-80gb"  # GQA: 128 KiB of KV per token, ~440k tokens of HBM pool
MAX_PREFILL = 131072  # the trace's longest prompt is 126,195 tokens
SINGLE_TIME_SCALE = 5.0
AFFINITY_TOKENS = 1024
ROUTERS = ("round-robin", "least-outstanding", "prefix-affinity")
QUICK = {"requests": 600, "pools": [262_144, 4_194_304], "pages": [16, 256], "replicas": 4}
FULL = {
    "requests": None,
    "pools": [262_144, 1_048_576, 4_194_304, 16_777_216, 67_108_864],
    "pages": [16, 64, 256],
    "replicas": 8,
}
POOL_COLUMNS = [
    "allocator", "page_size", "pool_tokens", "cached_token_fraction", "ttft_p50", "ttft_p99", "ttft_mean",
    "request_throughput", "rejected", "preemptions", "finished", "requests", "run_id",
]  # fmt: skip


def implied_share(path: Path = TRACE, max_requests: int | None = None, block_size: int = 512) -> float:
    """The share of prompt tokens an unbounded cache serves according to the hash ids alone: each request's
    longest run of leading blocks an earlier request held (a partial block counts what the earlier one held)."""
    held: dict[int, int] = {}
    shared = total = 0
    with lzma.open(path, "rt") if path.suffix == ".xz" else open(path) as f:
        for n, line in enumerate(f):
            if max_requests is not None and n >= max_requests:
                break
            record = json.loads(line)
            ids, length = record["hash_ids"], record["input_length"]
            sizes = np.minimum(block_size, length - block_size * np.arange(len(ids)))
            have = np.array([held.get(h, 0) for h in ids])
            short = np.flatnonzero(have < sizes)
            cut = short[0] if len(short) else len(ids)
            shared += int(sizes[:cut].sum()) + (int(have[cut]) if cut < len(ids) else 0)
            total += length
            for h, size in zip(ids, sizes.tolist(), strict=True):
                held[h] = max(held.get(h, 0), size)
    return shared / total


def trace_spec(settings: dict[str, Any], time_scale: float) -> str:
    options = [f"time_scale={time_scale:g}"]
    if settings["requests"]:
        options.append(f"max_requests={settings['requests']}")
    return f"trace:{TRACE}?{'&'.join(options)}"


def pool_grid(settings: dict[str, Any]) -> list[dict[str, Any]]:
    """Every (page size, pool) with prefix-cache, and a free-list baseline at each page size's smallest pool."""
    spec = trace_spec(settings, SINGLE_TIME_SCALE)
    common = {"workload": spec, "model": MODEL, "accelerator": ACCELERATOR, "max_prefill_length": MAX_PREFILL,
              "record_steps": False}  # fmt: skip
    grid = []
    for page in settings["pages"]:
        pages = [tokens // page for tokens in settings["pools"]]
        grid.append({**common, "page_size": page, "allocator": "prefix-cache", "num_pages": pages})
        grid.append({**common, "page_size": page, "allocator": "free-list", "num_pages": pages[0]})
    return grid


def run_pool(args: argparse.Namespace, settings: dict[str, Any]) -> pd.DataFrame:
    table = ok_rows(run_sweep(pool_grid(settings), **sweep_kwargs(args)))
    table["pool_tokens"] = table["num_pages"] * table["page_size"]
    return table[[c for c in POOL_COLUMNS if c in table.columns]]


def run_cluster(args: argparse.Namespace, settings: dict[str, Any]) -> pd.DataFrame:
    workload = load_trace(TRACE, max_requests=settings["requests"])
    config = SimConfig(model=MODEL, accelerator=ACCELERATOR, allocator="prefix-cache",
                       max_prefill_length=MAX_PREFILL, record_steps=False)  # fmt: skip
    rows = []
    for router in ROUTERS:
        result = simulate_cluster(config, workload, router, num_replicas=settings["replicas"],
                                  affinity_tokens=AFFINITY_TOKENS, progress=not args.no_progress)  # fmt: skip
        s = result.summary
        rows.append({
            "router": router, "replicas": settings["replicas"], "pool_tokens": int(result.replicas["num_pages"].iloc[0])
            * config.page_size, "cached_token_fraction": s["prefix_cache_hit_rate"], "ttft_p50": s["ttft_p50"],
            "ttft_p99": s["ttft_p99"], "e2e_p50": s["e2e_p50"], "request_throughput": s["request_throughput"],
            "requests_per_replica_max_over_mean": s["requests_per_replica_max_over_mean"],
            "requests_per_replica_cv": s["requests_per_replica_cv"], "finished": s["finished"],
            "requests": s["requests"],
        })  # fmt: skip
    return pd.DataFrame(rows)


def plot(pool: pd.DataFrame, cluster: pd.DataFrame, share: float, path: Path, publish: Path | None = None) -> Path:
    """Left: hit rate vs pool per page size (dotted: what the hash ids allow). Middle: TTFT p50 (solid) and p99
    (dashed) vs pool, free-list baseline in grey. Right: the cluster's hit rate and TTFT per router."""
    fig, (hit, ttft, routers) = plt.subplots(1, 3, figsize=(17, 4.8), layout="constrained")
    cached = pool[pool["allocator"] == "prefix-cache"].sort_values("pool_tokens")
    pools = sorted(cached["pool_tokens"].unique())
    for i, (page, g) in enumerate(cached.groupby("page_size")):
        color, marker = plt.cm.tab10(i), MARKERS[i % len(MARKERS)]
        hit.plot(g["pool_tokens"], 100 * g["cached_token_fraction"], color=color, marker=marker, label=f"page {page}")
        ttft.plot(g["pool_tokens"], g["ttft_p50"], color=color, marker=marker, label=f"page {page}")
        ttft.plot(g["pool_tokens"], g["ttft_p99"], color=color, marker=marker, ls="--", markerfacecolor="none")
    hit.axhline(100 * share, color="black", ls=":", lw=1, label="unbounded cache (hash ids)")
    for q, ls in (("ttft_p50", "-"), ("ttft_p99", "--")):
        base = pool.loc[pool["allocator"] == "free-list", q].median()
        ttft.axhline(base, color="grey", ls=ls, lw=1, label="free-list (no cache)" if q == "ttft_p50" else None)
    hit.set(xlabel="KV pool (tokens, log scale)", ylabel="prompt tokens served from cache (%)",
            title=f"one replica, trace {SINGLE_TIME_SCALE:g}x slower: hit rate", ylim=(0, 100))  # fmt: skip
    ttft.set(xlabel="KV pool (tokens, log scale)", ylabel="TTFT (s, log scale; dashed: p99)",
             title="time to first token", yscale="log")  # fmt: skip
    for ax in (hit, ttft):
        log_ticks(ax, pools)
        ax.set_xticks(pools, [f"{p / 2**20:g}M" if p >= 2**20 else f"{p // 1024}k" for p in pools])
        ax.legend(fontsize=8)
    lows = pool[["ttft_p50", "ttft_p99"]].to_numpy()
    ticks = [t for t in (0.5, 1, 2, 3, 5, 10, 20, 30, 50, 100) if lows.min() / 1.5 <= t <= lows.max() * 1.5]
    ttft.set_yticks(ticks, [f"{t:g}" for t in ticks])
    ttft.yaxis.set_minor_formatter(plt.NullFormatter())
    x = np.arange(len(cluster))
    routers.bar(x - 0.2, 100 * cluster["cached_token_fraction"], 0.4, color="tab:blue", label="hit rate (%)")
    twin = routers.twinx()
    twin.plot(x, cluster["ttft_p50"], "o-", color="tab:red", label="TTFT p50 (s)")
    twin.plot(x, cluster["ttft_p99"], "s--", color="tab:red", markerfacecolor="none", label="TTFT p99 (s)")
    twin.set(yscale="log", ylabel="TTFT (s, log scale)")
    plain_log_labels(twin)
    labels = [f"{r}\nmax/mean load {m:.2f}" for r, m in zip(cluster["router"],
              cluster["requests_per_replica_max_over_mean"], strict=True)]  # fmt: skip
    routers.set_xticks(x, labels, fontsize=8)
    routers.set(ylabel="prompt tokens served from cache (%)", ylim=(0, 100),
                title=f"{int(cluster['replicas'].iloc[0])} replicas, the trace's own pace, HBM pools")  # fmt: skip
    handles = routers.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    routers.legend(handles=handles, fontsize=8, loc="upper left")
    n = int(cluster["requests"].iloc[0])
    fig.suptitle(f"Prefix caching on the Mooncake conversation trace ({n:,} requests): {MODEL} on {ACCELERATOR}")
    return save_figure(fig, path, publish)


def run(args: argparse.Namespace) -> tuple[pd.DataFrame, pd.DataFrame]:
    out: Path = args.out
    if args.replot:
        pool, cluster = read_table(out / "pool.csv"), read_table(out / "cluster.csv")
        share = float(json.loads((out / "share.json").read_text())["unbounded_share"])
    else:
        settings = FULL if args.full else QUICK
        share = implied_share(max_requests=settings["requests"])
        pool = run_pool(args, settings)
        cluster = run_cluster(args, settings)
        write_table(pool, out / "pool.csv")
        write_table(cluster, out / "cluster.csv")
        (out / "share.json").write_text(json.dumps({"unbounded_share": share}) + "\n")
    figure = plot(pool, cluster, share, out / f"{NAME}.png", args.publish)
    print(f"unbounded-cache share of prompt tokens (from the hash ids): {100 * share:.1f} %")
    print_table(pool.drop(columns=["run_id"], errors="ignore"), "One replica: hit rate and TTFT (s) vs KV pool:")
    print_table(cluster, "Cluster: routers on the same trace:")
    print(f"\nwrote {out / 'pool.csv'}, {out / 'cluster.csv'}, {figure}")
    return pool, cluster
