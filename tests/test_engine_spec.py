"""One engine assembly (odrive.core.assembly.EngineSpec) for the simulator, the cluster and the real engine."""

from __future__ import annotations

import numpy as np

from odrive.core.assembly import EngineSpec
from odrive.schedulers.config import SchedulerConfig
from sim.config import SimConfig
from sim.executor import SimExecutor
from sim.simulator import Simulator, build_engine
from sim.workloads.request import Workload


def test_spec_builds_the_policies_the_pool_and_the_flags() -> None:
    spec = EngineSpec(SchedulerConfig(max_prefill_length=64), num_pages=40, page_size=8, scheduler="sarathi",
                      allocator="prefix-cache", eos_token_ids={2, 7}, fast_forward=False)  # fmt: skip
    engine = spec.build(SimExecutor.__new__(SimExecutor))
    assert type(engine.scheduler).__name__ == "TokenBudgetScheduler"  # sarathi
    assert engine.allocator.num_pages == 40 and type(engine.allocator).__name__ == "PrefixCacheAllocator"
    assert engine.eos_token_ids == frozenset({2, 7}) and not engine.fast_forward
    assert spec == EngineSpec(SchedulerConfig(max_prefill_length=64), 40, 8, "sarathi", "prefix-cache",
                              eos_token_ids=frozenset({2, 7}), fast_forward=False)  # fmt: skip


def test_the_simulator_injects_its_executor_and_fast_forward_at_build_time() -> None:
    config = SimConfig(model="tiny-bench", num_pages=64, max_prefill_length=256)
    engine = build_engine(config)
    assert config.engine_spec(64).scheduler_config == engine.scheduler.config and engine.fast_forward
    seen = []

    def factory(sched_cfg, clock):  # noqa: ANN001, ANN202
        seen.append((sched_cfg, clock()))
        return SimExecutor(engine.executor.latency_model, sched_cfg)

    wl = Workload(np.array([0.0, 0.1]), np.array([20, 30]), np.array([5, 6]))
    sim = Simulator(config, wl, executor=factory, fast_forward=False)
    assert seen == [(sim.engine.scheduler.config, 0.0)] and not sim.engine.fast_forward
    stepped = sim.run().steps
    assert (stepped["num_steps"] == 1).all()  # no decode run fast-forwarded
    plain = Simulator(config, wl).run()
    assert plain.requests["num_output_tokens"].tolist() == [5, 6]


def test_executor_listeners_see_every_executed_batch_without_wrapping_the_executor() -> None:
    config = SimConfig(model="tiny-bench", num_pages=64, max_prefill_length=256)
    wl = Workload(np.array([0.0, 0.0]), np.array([20, 30]), np.array([3, 4]))
    sim = Simulator(config, wl, fast_forward=False)
    executor, seen = sim.engine.executor, []
    sim.engine.execute_listeners.append(lambda batch, result: seen.append((len(batch), result.duration)))
    steps = sim.run().steps
    assert sim.engine.executor is executor
    assert [d for _, d in seen] == steps["duration"].tolist() and len(seen) == len(steps)
