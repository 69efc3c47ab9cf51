"""One replica of a simulated cluster: its own Engine, scheduler, allocator and SimExecutor, as a simpy process.

The step loop and the workload-to-request conversion are the single-replica simulator's
(:class:`sim.simulator.ReplicaLoop`, :class:`sim.simulator.WorkloadRequests`); a replica adds the delivery mode
(arrivals routed one by one at arrival time), the cluster's views and its own counters."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np
import simpy

from odrive.core.engine import StepOutcome
from odrive.core.request import Request
from sim.cluster.views import ClusterViews
from sim.config import SimConfig
from sim.simulator import ReplicaLoop, WorkloadRequests, build_engine
from sim.workloads.request import Workload

HorizonFn = Callable[[int, float], float]


class Replica(ReplicaLoop):
    """Steps its engine on the shared simpy clock.

    Arrivals come either pre-routed (``own``: this replica's request indices, known up front, so the
    fast-forward horizon is exactly its own next arrival) or delivered one by one by the cluster at
    arrival time (``deliver``), in which case ``horizon_fn(replica, now)`` bounds its decode runs.
    ``workload``: the cluster's :class:`WorkloadRequests` (shared by its replicas), or a workload to read.
    """

    def __init__(
        self,
        index: int,
        config: SimConfig,
        env: simpy.Environment,
        workload: Workload | WorkloadRequests,
        metrics: Any,
        *,
        own: np.ndarray | None = None,
        horizon_fn: HorizonFn | None = None,
        before_step: Callable[[float], None] | None = None,
        views: ClusterViews | None = None,
    ) -> None:
        if (own is None) == (horizon_fn is None):
            raise ValueError("a replica takes either its pre-routed arrivals (own) or a horizon_fn")
        requests = workload if isinstance(workload, WorkloadRequests) else WorkloadRequests(workload)
        engine = build_engine(config, metrics=metrics, clock=lambda: env.now)
        # delivery mode serves no arrivals of its own: the inbox is its source
        super().__init__(env, engine, requests, [] if own is None else own.tolist(), label=f"replica {index}: ")
        self.index = index
        self.config = config
        # Routers that read replica state see a step's finishes at its end: a decode run must end at a finish.
        self.engine.fast_forward_past_finishes = views is None
        self._delivered = own is None
        self._inbox: deque[int] = deque()
        self._horizon_fn = horizon_fn
        self._before_step = before_step
        self._views = views  # told about every change of this replica's outstanding count (delivery mode)
        self._wake: simpy.Event | None = None
        self.closed = False  # the cluster will deliver nothing more
        self.num_routed = 0
        self.last_end = -math.inf  # end of the latest step, and how many requests it finished
        self.last_finished = 0
        self.step_calls = 0  # Engine.step calls that ran something: the simulator's main cost

    # --- arrivals ---------------------------------------------------------------------------------
    def deliver(self, index: int) -> None:
        """Hand request ``index`` to this replica now (it is admitted at the next step boundary)."""
        self._inbox.append(index)
        self.num_routed += 1
        self._report()
        if self._wake is not None and not self._wake.triggered:
            self._wake.succeed()

    def close(self) -> None:
        """No more deliveries will come; an idle replica may end its process."""
        self.closed = True
        if self._wake is not None and not self._wake.triggered:
            self._wake.succeed()

    def _request(self, i: int) -> Request:
        """Request ``i`` of the workload."""
        return self.requests.request(i)

    def _before(self, now: float) -> None:
        if self._before_step is not None:
            self._before_step(now)

    def _admit(self, now: float) -> None:
        if not self._delivered:
            super()._admit(now)
            return
        inbox = self._inbox
        if inbox:
            add = self._add
            while inbox:
                add(inbox.popleft())
            self._report()  # rejected requests are done at once

    def _report(self) -> None:
        if self._views is not None:
            self._views.report(self.index, self.num_routed, self.engine.metrics.num_done, self.last_end,
                               self.last_finished)  # fmt: skip

    def _horizon(self, now: float) -> float:
        if not self._delivered:
            return self._next_own - now
        return self._horizon_fn(self.index, now)  # type: ignore[misc]

    def _wait(self) -> simpy.Event | None:
        """What to wait on for the next arrival to this replica; None if none can come."""
        if not self._delivered:
            return super()._wait()
        if self.closed and not self._inbox:
            return None
        self._wake = self.env.event()
        if self._inbox or self.closed:
            self._wake.succeed()
        return self._wake

    def _stepped(self, outcome: StepOutcome) -> None:
        self.step_calls += 1
        self.last_end = outcome.end
        self.last_finished = len(outcome.finished)
        if self._views is not None:
            self._report()
