"""One replica of a simulated cluster: its own Engine, scheduler, allocator and SimExecutor, as a simpy process."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Generator
from typing import Any

import numpy as np
import simpy

from odrive.core.engine import Engine
from odrive.core.request import Request
from odrive.core.sampling_params import SamplingParams
from odrive.errors import InvariantViolation
from sim.cluster.views import ClusterViews
from sim.config import SimConfig
from sim.simulator import build_engine
from sim.workloads.request import Workload, checked_prompt_ids

HorizonFn = Callable[[int, float], float]


class Replica:
    """Steps its engine on the shared simpy clock.

    Arrivals come either pre-routed (``own``: this replica's request indices, known up front, so the
    fast-forward horizon is exactly its own next arrival) or delivered one by one by the cluster at
    arrival time (``deliver``), in which case ``horizon_fn(replica, now)`` bounds its decode runs.
    """

    def __init__(
        self,
        index: int,
        config: SimConfig,
        env: simpy.Environment,
        workload: Workload,
        metrics: Any,
        *,
        own: np.ndarray | None = None,
        horizon_fn: HorizonFn | None = None,
        before_step: Callable[[float], None] | None = None,
        views: ClusterViews | None = None,
    ) -> None:
        if (own is None) == (horizon_fn is None):
            raise ValueError("a replica takes either its pre-routed arrivals (own) or a horizon_fn")
        self.index = index
        self.config = config
        self.env = env
        self.engine: Engine = build_engine(config, metrics=metrics, clock=lambda: env.now)
        # Routers that read replica state see a step's finishes at its end: a decode run must end at a finish.
        self.engine.fast_forward_past_finishes = views is None
        self._times = workload.arrival_times
        self._prompts = workload.prompt_lens
        self._outputs = workload.output_lens
        self._priorities = workload.priorities
        self._prompt_ids = workload.prompt_token_ids  # token ids, for prefix caching (None: lengths only)
        self._own = own
        self._own_times = None if own is None else workload.arrival_times[own]
        self._pos = 0
        self._next_own = self._own_time(0)
        self._inbox: deque[int] = deque()
        self._horizon_fn = horizon_fn
        self._before_step = before_step
        self._views = views  # told about every change of this replica's outstanding count (delivery mode)
        self._params: dict[int, SamplingParams] = {}  # frozen, so requests with equal max_tokens share one
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

    def _request(self, i: int, max_tokens: int | None = None) -> Request:
        """Request ``i`` of the workload (``max_tokens``: instead of its output length)."""
        max_tokens = int(self._outputs[i]) if max_tokens is None else max_tokens
        params = self._params.get(max_tokens)
        if params is None:
            params = self._params[max_tokens] = SamplingParams(max_tokens=max_tokens, ignore_eos=True)
        num_prompt_tokens = int(self._prompts[i])
        return Request(
            request_id=f"r{i}",
            num_prompt_tokens=num_prompt_tokens,
            sampling_params=params,
            arrival_time=float(self._times[i]),
            prompt_token_ids=checked_prompt_ids(self._prompt_ids, i, num_prompt_tokens),
            priority=0 if self._priorities is None else int(self._priorities[i]),
        )

    def _add(self, i: int) -> None:
        """Hand request ``i`` to the engine (a subclass may check or reshape it first)."""
        self.engine.add_request(self._request(i))

    def _admit(self, now: float) -> None:
        add = self._add
        own = self._own
        if own is None:
            inbox = self._inbox
            if inbox:
                while inbox:
                    add(inbox.popleft())
                self._report()  # rejected requests are done at once
            return
        if self._next_own > now:
            return
        times, pos, n = self._own_times, self._pos, len(own)
        while pos < n and times[pos] <= now:
            add(int(own[pos]))
            pos += 1
        self._pos = pos
        self._next_own = self._own_time(pos)

    def _report(self) -> None:
        if self._views is not None:
            self._views.report(self.index, self.num_routed, self.engine.metrics.num_done, self.last_end,
                               self.last_finished)  # fmt: skip

    def _own_time(self, pos: int) -> float:
        times = self._own_times
        return float(times[pos]) if times is not None and pos < len(times) else math.inf

    def _wait(self) -> simpy.Event | None:
        """What to wait on for the next arrival to this replica; None if none can come."""
        if self._own is not None:
            t = self._next_own
            return None if t == math.inf else self.env.timeout(t - self.env.now)
        if self.closed and not self._inbox:
            return None
        self._wake = self.env.event()
        if self._inbox or self.closed:
            self._wake.succeed()
        return self._wake

    # --- the process --------------------------------------------------------------------------------
    def run(self) -> Generator[simpy.Event, Any, None]:
        env, engine, step = self.env, self.engine, self.engine.step
        own, before, horizon_fn = self._own, self._before_step, self._horizon_fn
        while True:
            now = env.now
            if before is not None:
                before(now)
            self._admit(now)
            if not engine.has_unfinished:
                wait = self._wait()
                if wait is None:
                    return
                yield wait
                continue
            horizon = self._next_own - now if own is not None else horizon_fn(self.index, now)
            outcome = step(now, horizon=horizon)
            if outcome is None:
                wait = self._wait()
                if wait is None:
                    raise InvariantViolation(
                        "progress", f"replica {self.index}: requests remain but none can be scheduled"
                    )
                yield wait
                continue
            self.step_calls += 1
            self.last_end = outcome.end
            self.last_finished = len(outcome.finished)
            if self._views is not None:
                self._report()
            yield env.timeout(outcome.duration)
