"""Summaries of a disaggregated run: the cluster's, each pool's (prefill TTFT; decode TPOT), the K/V hand-off's."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from sim.cluster.replica import Replica
from sim.cluster.summary import summarize_cluster
from sim.cluster.table_sink import read_table
from sim.simulator import latency_parameters

if TYPE_CHECKING:
    from sim.cluster.handoff import Handoff

HANDOFF_READ = ["status", "arrival_time", "first_token_time", "prefill_replica", "prefill_done_time", "kv_send_time",
                "kv_start_time", "kv_bytes"]  # fmt: skip


def _describe(summary: pd.Series, name: str, values: np.ndarray) -> None:
    values = values[np.isfinite(values)]
    for q in (50, 90, 99):
        summary[f"{name}_p{q}"] = float(np.percentile(values, q)) if len(values) else math.nan
    summary[f"{name}_mean"] = float(values.mean()) if len(values) else math.nan
    summary[f"{name}_max"] = float(values.max()) if len(values) else math.nan


def summarize_disaggregated(
    requests_path: Path, prefill: Sequence[Replica], decode: Sequence[Replica], handoff: Handoff
) -> tuple[pd.Series, pd.DataFrame]:
    """The cluster summary plus, per pool and for the hand-off:

    - ``prefill_ttft_*``: arrival to the end of the prefill (the prefill pool's time to first token);
      ``ttft_*`` counts on to the K/V's arrival at the decode replica, ``tpot_*`` is the decode pool's.
    - ``kv_handoff_*``: prefill end to K/V arrival (waiting for room, queueing on the link, the transfer itself);
      ``kv_wait_*``: waiting for the decode replica's room; ``kv_link_wait_*``: queueing on the link.
    - ``link_utilization_mean/max``: each link's busy time over the run's span; ``link_max_queue``: the most
      transfers queued or in flight on one link; ``max_waiting_for_decode``: the most prefilled requests waiting
      for a decode replica's room at once; ``kv_bytes_mean``: bytes sent per request.

    Per-replica rows get ``pool``; prefill rows count ``prefilled`` requests and their ``prefill_ttft_p50/p99``.
    """
    summary, per_replica = summarize_cluster(requests_path, [*prefill, *decode], None)  # type: ignore[arg-type]
    per_replica.insert(1, "pool", ["prefill"] * len(prefill) + ["decode"] * len(decode))
    frame = read_table(requests_path, HANDOFF_READ)
    done = frame[frame["status"] == "finished"]
    prefill_done = done["prefill_done_time"].to_numpy(dtype=np.float64)
    first_token = done["first_token_time"].to_numpy(dtype=np.float64)
    sent, start = done["kv_send_time"].to_numpy(dtype=np.float64), done["kv_start_time"].to_numpy(dtype=np.float64)
    prefill_ttft = prefill_done - done["arrival_time"].to_numpy(dtype=np.float64)
    _describe(summary, "prefill_ttft", prefill_ttft)
    handed = np.isfinite(sent)
    _describe(summary, "kv_handoff", (first_token - prefill_done)[handed])
    _describe(summary, "kv_wait", (sent - prefill_done)[handed])
    _describe(summary, "kv_link_wait", (start - sent)[handed])
    kv_bytes = done["kv_bytes"].to_numpy(dtype=np.float64)[handed]
    summary["kv_bytes_mean"] = float(kv_bytes.mean()) if len(kv_bytes) else math.nan
    span = summary["duration_s"]
    busy = np.array([link.busy_s for link in handoff.links])
    summary["link_utilization_mean"] = float(busy.mean() / span) if span and span > 0 else math.nan
    summary["link_utilization_max"] = float(busy.max() / span) if span and span > 0 else math.nan
    summary["link_max_queue"] = float(max(link.max_queue for link in handoff.links))
    summary["kv_links"] = float(len(handoff.links))
    summary["max_waiting_for_decode"] = float(handoff.max_pending)
    summary["prefill_replicas"] = float(len(prefill))
    summary["decode_replicas"] = float(len(decode))
    summary["accelerators"] = float(sum(r.config.tp for r in [*prefill, *decode]))
    for pool, replicas in (("prefill", prefill), ("decode", decode)):
        for key, value in latency_parameters(replicas[0].engine).items():
            summary[f"{pool}_{key}"] = value
    # Load balance over the decode pool (prefill replicas write only the rows of requests that never decode).
    counts = per_replica.loc[per_replica["pool"] == "decode", "requests"].to_numpy(dtype=np.float64)
    mean = counts.mean() if len(counts) else 0.0
    summary["requests_per_replica_max_over_mean"] = float(counts.max() / mean) if mean > 0 else math.nan
    summary["requests_per_replica_cv"] = float(counts.std() / mean) if mean > 0 else math.nan
    which = done["prefill_replica"].to_numpy()
    prefilled, p50, p99 = [], [], []
    for p in range(len(prefill)):
        mine = prefill_ttft[which == p]
        prefilled.append(float(len(mine)))
        p50.append(float(np.percentile(mine, 50)) if len(mine) else math.nan)
        p99.append(float(np.percentile(mine, 99)) if len(mine) else math.nan)
    nan = [math.nan] * len(decode)
    per_replica["prefilled"] = prefilled + nan
    per_replica["prefill_ttft_p50"] = p50 + nan
    per_replica["prefill_ttft_p99"] = p99 + nan
    return summary, per_replica
