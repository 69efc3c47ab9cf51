"""Cluster simulation: many replicas (each its own Engine, scheduler, allocator and SimExecutor) behind a
pluggable global router, on one simpy clock, with per-request metrics streamed to disk.

``simulate_cluster([SimConfig(...)] * 64, workload, "least-outstanding", out_dir="results/cluster")`` or
``python -m sim.cluster --replicas 64 --router least-outstanding``.
"""

from sim.cluster.routers import ROUTERS, Arrivals, Router, make_router
from sim.cluster.simulator import ClusterResult, ClusterSimulator, expand_configs, simulate_cluster
from sim.cluster.workloads import prefix_keys_from_tokens, replay, zipf_groups

__all__ = [
    "ROUTERS",
    "Arrivals",
    "ClusterResult",
    "ClusterSimulator",
    "Router",
    "expand_configs",
    "make_router",
    "prefix_keys_from_tokens",
    "replay",
    "simulate_cluster",
    "zipf_groups",
]
