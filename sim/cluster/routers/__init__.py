"""Global routers of a simulated cluster, registered by name (``make_router("least-outstanding", 64)``)."""

from sim.cluster.routers.base import ROUTERS, Arrivals, ReplicaViews, Router, make_router
from sim.cluster.routers.least_kv_load import LeastKVLoadRouter
from sim.cluster.routers.least_outstanding import LeastOutstandingRouter
from sim.cluster.routers.power_of_two import PowerOfTwoRouter
from sim.cluster.routers.prefix_affinity import PrefixAffinityRouter
from sim.cluster.routers.round_robin import RoundRobinRouter

__all__ = [
    "ROUTERS",
    "Arrivals",
    "LeastKVLoadRouter",
    "LeastOutstandingRouter",
    "PowerOfTwoRouter",
    "PrefixAffinityRouter",
    "ReplicaViews",
    "RoundRobinRouter",
    "Router",
    "make_router",
]
