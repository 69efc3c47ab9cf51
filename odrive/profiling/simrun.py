"""Run the simulator the way a validation against the real engine needs it: the calibrated model fed each
batch's exact per-sequence lengths, the real engine's buckets, optionally per-step (no fast-forward) with
every plan recorded."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd

from odrive.allocators.prefix_cache import PrefixCacheStats
from odrive.core.engine import SwapStats
from odrive.core.executor import Executor
from odrive.profiling.plans import plan_table, record_outcomes, sim_request_index
from odrive.schedulers.config import SchedulerConfig
from sim.config import SimConfig
from sim.executor import SimExecutor, swap_rates
from sim.hardware import get_accelerator
from sim.latency.calibrated import CalibratedLatencyModel
from sim.latency.executor_setup import ExecutorSetup
from sim.model_spec import get_model_spec
from sim.simulator import SimResult, Simulator
from sim.workloads.request import Workload


@dataclass
class SimRun:
    result: SimResult
    requests: pd.DataFrame  # result.requests plus ``index`` (workload row)
    plans: pd.DataFrame | None = None
    swap_stats: SwapStats = field(default_factory=SwapStats)  # the engine's swap preemption traffic
    prefix_stats: PrefixCacheStats | None = None  # the prefix cache's counters (None without one)


def simulate_calibrated(
    config: SimConfig,
    workload: Workload,
    model: CalibratedLatencyModel,
    *,
    max_length: int | None = None,
    exact: bool = True,
    fast_forward: bool = True,
    record_plans: bool = False,
) -> SimRun:
    """Simulate ``workload`` under ``config`` with ``model`` (in place of ``config``'s latency model).

    ``exact``: time batches from their per-sequence lengths with the geometry ``vSurge.create_odriver`` builds
    for this scheduler config and ``max_length`` (the executor ``model.make_executor`` gives, as
    ``build_engine`` does for ``latency_model="calibrated"``: :class:`CalibratedSimExecutor`); otherwise through
    the ``BatchShape`` interface only (the stock ``SimExecutor``, which knows a step's sums). Swap preemption is
    charged as ``build_engine`` charges it. ``fast_forward=False`` steps decode runs one at a time (the real
    engine's granularity), e.g. to compare plans step by step.
    """
    kv_bytes, bandwidth = swap_rates(get_model_spec(config.model), get_accelerator(config.accelerator), config.tp)

    def executor(sched_cfg: SchedulerConfig, clock: Callable[[], float] | None) -> Executor:
        if exact:
            setup = ExecutorSetup(config.page_size, max_length, clock, kv_bytes, bandwidth)
            return model.make_executor(sched_cfg, setup)
        return SimExecutor(model, sched_cfg, kv_bytes_per_token=kv_bytes, host_bandwidth=bandwidth)

    sim = Simulator(config, workload, executor=executor, fast_forward=fast_forward)
    engine = sim.engine
    outcomes = record_outcomes(engine) if record_plans else None
    result = sim.run()
    requests = result.requests.copy()
    requests.insert(0, "index", requests["request_id"].map(sim_request_index))
    requests = requests.sort_values("index").reset_index(drop=True)
    plans = plan_table(outcomes, result.steps, sim_request_index) if outcomes is not None else None
    prefix = getattr(engine.allocator, "prefix_stats", None)
    return SimRun(result, requests, plans, engine.swap_stats, prefix() if prefix is not None else None)
