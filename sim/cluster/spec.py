"""A whole cluster as plain data (hashable, so searches and experiments can cache by it): colocated replicas, or a
prefill pool and a decode pool."""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from odrive.errors import ConfigError
from sim.cluster.disaggregated import simulate_disaggregated
from sim.cluster.kv_link import KVLinkConfig
from sim.cluster.simulator import ClusterResult, simulate_cluster
from sim.config import SimConfig
from sim.workloads.request import Workload


@dataclass(frozen=True)
class ClusterSpec:
    """``replicas`` colocated replicas of ``replica``; or, with ``prefill_replicas`` > 0, that many prefill replicas
    and ``decode_replicas`` (default: the rest of ``replicas``) decode replicas, each pool ``replica`` with its
    overrides (``prefill`` / ``decode``: ``(field, value)`` pairs), joined by ``link``."""

    replica: SimConfig = field(default_factory=SimConfig)
    replicas: int = 1
    prefill_replicas: int = 0
    decode_replicas: int | None = None
    prefill: tuple[tuple[str, Any], ...] = ()
    decode: tuple[tuple[str, Any], ...] = ()
    router: str = "round-robin"
    prefill_router: str | None = None
    decode_router: str | None = None
    link: KVLinkConfig = field(default_factory=KVLinkConfig)

    def __post_init__(self) -> None:
        if self.prefill_replicas < 0:
            raise ConfigError(f"prefill_replicas must be >= 0, got {self.prefill_replicas}")
        if not self.disaggregated and self.replicas < 1:
            raise ConfigError(f"a cluster needs >= 1 replica, got {self.replicas}")
        if self.disaggregated and self.num_decode < 1:
            raise ConfigError(
                f"{self.prefill_replicas} prefill replicas leave no decode replica of {self.replicas} "
                "(set decode_replicas or more replicas)"
            )

    @property
    def disaggregated(self) -> bool:
        return self.prefill_replicas > 0

    @property
    def num_decode(self) -> int:
        return self.decode_replicas if self.decode_replicas is not None else self.replicas - self.prefill_replicas

    def pool(self, name: str) -> SimConfig:
        """The config of the ``prefill`` or ``decode`` pool's replicas."""
        overrides = dict(self.prefill if name == "prefill" else self.decode)
        try:
            return dataclasses.replace(self.replica, **overrides)
        except TypeError as err:
            raise ConfigError(f"{name} pool overrides {overrides}: {err}") from None

    def devices(self) -> Counter[str]:
        """Accelerators the cluster occupies, by accelerator name (replicas × tensor parallel size)."""
        if not self.disaggregated:
            return Counter({self.replica.accelerator: self.replicas * self.replica.tp})
        prefill, decode = self.pool("prefill"), self.pool("decode")
        count: Counter[str] = Counter()
        count[prefill.accelerator] += self.prefill_replicas * prefill.tp
        count[decode.accelerator] += self.num_decode * decode.tp
        return count

    @property
    def accelerators(self) -> int:
        return sum(self.devices().values())

    def split(self) -> str:
        """``colocated`` or ``P:D``."""
        return f"{self.prefill_replicas}:{self.num_decode}" if self.disaggregated else "colocated"

    def simulate(self, workload: Workload, **kw: Any) -> ClusterResult:
        """Run ``workload`` on this cluster (``kw``: :class:`~sim.cluster.ClusterSimulator` options)."""
        if not self.disaggregated:
            return simulate_cluster(self.replica, workload, self.router, num_replicas=self.replicas, **kw)
        return simulate_disaggregated(
            self.pool("prefill"), self.pool("decode"), workload, prefill_replicas=self.prefill_replicas,
            decode_replicas=self.num_decode, prefill_router=self.prefill_router or self.router,
            decode_router=self.decode_router or self.router, link=self.link, **kw,
        )  # fmt: skip
