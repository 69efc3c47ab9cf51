"""Cluster simulation: many replicas (each its own Engine, scheduler, allocator and SimExecutor) behind a
pluggable global router, on one simpy clock, with per-request metrics streamed to disk.

``simulate_cluster([SimConfig(...)] * 64, workload, "least-outstanding", out_dir="results/cluster")`` or
``python -m sim.cluster --replicas 64 --router least-outstanding``. Disaggregated serving (a prefill pool and a
decode pool, K/V shipped between them): ``simulate_disaggregated`` or ``--prefill-replicas``; a whole cluster as
plain data: :class:`ClusterSpec`.
"""

from sim.cluster.disaggregated import DisaggregatedSimulator, simulate_disaggregated
from sim.cluster.kv_link import KVLinkConfig
from sim.cluster.routers import ROUTERS, Arrivals, Router, make_router
from sim.cluster.simulator import ClusterResult, ClusterSimulator, expand_configs, simulate_cluster
from sim.cluster.spec import ClusterSpec
from sim.cluster.workloads import prefix_keys_from_tokens, replay, zipf_groups

__all__ = [
    "ROUTERS",
    "Arrivals",
    "ClusterResult",
    "ClusterSimulator",
    "ClusterSpec",
    "DisaggregatedSimulator",
    "KVLinkConfig",
    "Router",
    "expand_configs",
    "make_router",
    "prefix_keys_from_tokens",
    "replay",
    "simulate_cluster",
    "simulate_disaggregated",
    "zipf_groups",
]
