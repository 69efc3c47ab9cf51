"""Closed workloads (every request queued at t = 0): the simulator must decide exactly what the real engine decided.

With no arrival during the run, nothing a policy decides depends on how long a step took, so the simulated and
the real run of one scheduler, allocator and preemption mode must agree step for step: who is scheduled for how
many tokens, who is preempted, whose K/V are swapped out and back, how many KV pages are in use, and per request
how many prompt tokens the prefix cache served. :func:`compare_closed` runs both and lists every difference.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pandas as pd

from odrive.profiling.plans import compare_outcomes, compare_plans
from odrive.profiling.replay import ReplayResult, replay
from odrive.profiling.simrun import SimRun, simulate_calibrated
from odrive.vsurge.driver import vSurge
from sim.config import SimConfig
from sim.latency.calibrated import CalibratedLatencyModel
from sim.workloads.request import Workload

SWAP_COUNTERS = ("requests_out", "requests_in", "pages_out", "pages_in")


def closed(workload: Workload) -> Workload:
    """``workload`` with every request arriving at t = 0 (its prompts, priorities and token ids kept)."""
    return dataclasses.replace(workload, arrival_times=np.zeros(len(workload)))


@dataclass
class ClosedComparison:
    """Both runs of a closed workload and what differs between them (every frame empty / dict equal when the
    simulator decided exactly as the real engine)."""

    real: ReplayResult
    sim: SimRun
    plans_diff: pd.DataFrame  # steps whose plan or page use differ (odrive.profiling.plans.compare_plans)
    outcomes_diff: pd.DataFrame  # requests whose tokens, preemptions or cache hits differ (compare_outcomes)
    swaps: dict[str, tuple[int, int]]  # swap counter -> (real, sim)
    prefix: dict[str, tuple[int, int]]  # prefix-cache counter -> (real, sim); empty without a prefix cache

    @property
    def identical(self) -> bool:
        return (
            self.plans_diff.empty
            and self.outcomes_diff.empty
            and all(a == b for a, b in self.swaps.values())
            and all(a == b for a, b in self.prefix.values())
        )

    def describe(self) -> str:
        """What differs (for an assertion message), or that nothing does."""
        if self.identical:
            return f"identical: {len(self.real.plans)} steps"
        parts = [f"{len(self.real.plans)} real vs {len(self.sim.plans)} simulated steps"]
        if not self.plans_diff.empty:
            parts.append(f"{len(self.plans_diff)} steps differ, first:\n{self.plans_diff.head(3).to_string()}")
        if not self.outcomes_diff.empty:
            parts.append(f"{len(self.outcomes_diff)} requests differ:\n{self.outcomes_diff.head(5).to_string()}")
        parts += [f"{k}: real {a}, sim {b}" for k, (a, b) in {**self.swaps, **self.prefix}.items() if a != b]
        return "\n".join(parts)


def compare_closed(
    surge: vSurge,
    config: SimConfig,
    workload: Workload,
    model: CalibratedLatencyModel,
    *,
    max_length: int | None = None,
    seed: int = 0,
) -> ClosedComparison:
    """Run ``workload`` with every request at t = 0 on ``surge`` (a fresh engine: nothing cached, no policy state)
    and, stepping one step at a time, in the simulator under ``config`` (the same scheduler, allocator, limits and
    pool) with ``model``; compare them."""
    engine = surge.engine
    if engine.metrics.num_done or engine.has_unfinished:
        raise ValueError("compare_closed needs a fresh engine (its prefix cache and policy state empty)")
    wl = closed(workload)
    real = replay(surge, wl, seed=seed)
    sim = simulate_calibrated(config, wl, model, max_length=max_length, fast_forward=False, record_plans=True)
    a, b = dataclasses.asdict(engine.swap_stats), dataclasses.asdict(sim.swap_stats)
    swaps = {k: (int(a[k]), int(b[k])) for k in SWAP_COUNTERS}
    prefix = {}
    real_prefix = getattr(engine.allocator, "prefix_stats", None)
    if real_prefix is not None and sim.prefix_stats is not None:
        a, b = dataclasses.asdict(real_prefix()), dataclasses.asdict(sim.prefix_stats)
        prefix = {k: (int(a[k]), int(b[k])) for k in a}
    return ClosedComparison(
        real, sim, compare_plans(real.plans, sim.plans), compare_outcomes(real.requests, sim.requests), swaps, prefix
    )
