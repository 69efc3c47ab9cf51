"""The link that carries a request's K/V from its prefill replica to its decode replica (disaggregated serving).

A transfer of ``n`` bytes occupies its link for ``8 n / (gbps × 10^9)`` seconds and arrives ``latency_s`` after it
leaves the link. Transfers queue on a link first come, first served; each prefill replica sends over its own link
(``topology="per-prefill"``, e.g. one NIC per replica) or all share one (``"shared"``, e.g. one fabric port).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

TOPOLOGIES = ("per-prefill", "shared")


@dataclass(frozen=True)
class KVLinkConfig:
    """``gbps`` per link (``math.inf``: instantaneous) and a fixed per-transfer ``latency_s``. The defaults are
    assumptions, not measurements: one 400 Gb/s InfiniBand NDR port per prefill replica, 10 µs per transfer."""

    gbps: float = 400.0
    latency_s: float = 10e-6
    topology: str = "per-prefill"

    def __post_init__(self) -> None:
        if not self.gbps > 0:
            raise ValueError(f"kv link bandwidth must be > 0 Gb/s (inf for instantaneous), got {self.gbps}")
        if not self.latency_s >= 0 or math.isinf(self.latency_s):
            raise ValueError(f"kv link latency must be a finite number >= 0 s, got {self.latency_s}")
        if self.topology not in TOPOLOGIES:
            raise ValueError(f"kv link topology must be one of {TOPOLOGIES}, got {self.topology!r}")

    def busy_seconds(self, num_bytes: float) -> float:
        """How long a transfer of ``num_bytes`` occupies the link (0 on an instantaneous link)."""
        return 0.0 if math.isinf(self.gbps) else num_bytes * 8 / (self.gbps * 1e9)

    def transfer_seconds(self, num_bytes: float) -> float:
        """A transfer's time on an idle link: occupancy plus latency."""
        return self.busy_seconds(num_bytes) + self.latency_s

    def num_links(self, prefill_replicas: int) -> int:
        return prefill_replicas if self.topology == "per-prefill" else 1


class KVLink:
    """One link's FIFO queue: when each transfer starts and arrives, how long the link was busy, the longest queue."""

    def __init__(self, config: KVLinkConfig) -> None:
        self.config = config
        self.free_at = 0.0  # when the last queued transfer leaves the link
        self.busy_s = 0.0
        self.transfers = 0
        self.bytes = 0.0
        self.max_queue = 0  # most transfers queued or in flight at once
        self._arrivals: deque[float] = deque()  # arrival times of transfers not yet arrived (non-decreasing)

    def send(self, now: float, num_bytes: float) -> tuple[float, float]:
        """Queue a transfer at ``now``: ``(start on the link, arrival at the decode replica)``."""
        start = max(now, self.free_at)
        busy = self.config.busy_seconds(num_bytes)
        self.free_at = start + busy
        self.busy_s += busy
        self.transfers += 1
        self.bytes += num_bytes
        arrival = start + busy + self.config.latency_s
        queue = self._arrivals
        while queue and queue[0] <= now:
            queue.popleft()
        queue.append(arrival)
        self.max_queue = max(self.max_queue, len(queue))
        return start, arrival
