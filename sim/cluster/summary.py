"""Cluster and per-replica summaries, computed from the streamed requests table."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from odrive.core.metrics import summarize
from sim.cluster.recorder import StepStats
from sim.cluster.replica import Replica
from sim.cluster.routers import Router
from sim.cluster.table_sink import read_table
from sim.simulator import latency_parameters

HEAVY_COLUMNS = ("request_id", "message")  # strings the summary does not need: not read back


def summarize_cluster(
    requests_path: Path, replicas: Sequence[Replica], router: Router
) -> tuple[pd.Series, pd.DataFrame]:
    """The cluster summary (``odrive.core.metrics.summarize`` over all requests plus pooled KV statistics and
    load balance) and one summary row per replica (same keys, plus its hardware, policies and pool)."""
    frame = read_table(requests_path, exclude=HEAVY_COLUMNS)
    which = frame["replica"].to_numpy()
    rows, pooled = [], StepStats()
    for r, replica in enumerate(replicas):
        stats = replica.engine.metrics.step_stats
        pooled.merge(stats)
        s = summarize(frame[which == r])  # one replica's rows at a time: small copies
        for key, value in stats.summary().items():
            s[key] = value
        alloc = replica.engine.allocator
        s["num_pages"] = float(alloc.num_usable_pages)
        s["free_pages_at_end"] = float(alloc.num_free_pages)
        s["engine_step_calls"] = float(replica.step_calls)
        row = {
            "replica": r,
            "accelerator": replica.config.accelerator,
            "model": replica.config.model,
            "scheduler": replica.config.scheduler,
            "allocator": replica.config.allocator,
            **s.to_dict(),
        }
        rows.append(row)
    per_replica = pd.DataFrame(rows)
    summary = summarize(frame)
    for key, value in pooled.summary().items():
        summary[key] = value
    counts = per_replica["requests"].to_numpy() if len(per_replica) else np.zeros(0)
    if replicas:  # the latency model's physics (efficiency factors, all-reduce α–β) of the first replica
        for key, value in latency_parameters(replicas[0].engine).items():
            summary[key] = value
    summary["replicas"] = float(len(replicas))
    summary["engine_step_calls"] = float(sum(r.step_calls for r in replicas))
    summary["requests_per_replica_max_over_mean"] = (
        float(counts.max() / counts.mean()) if len(counts) and counts.mean() > 0 else math.nan
    )
    summary["requests_per_replica_cv"] = (
        float(counts.std() / counts.mean()) if len(counts) and counts.mean() > 0 else math.nan
    )
    return summary, per_replica
