"""One engine assembly for both backends: :class:`EngineSpec` says everything that decides an engine except how a
step is executed, and :meth:`EngineSpec.build` puts the allocator, the scheduler and the ``Engine`` together around
an executor handed in at build time (never swapped in afterwards).

``vSurge.create_odriver`` (the real engine), ``sim.simulator.build_engine`` (the simulator, hence every cluster
replica) and the profiler's calibrated simulation (``odrive.profiling.simrun``) build their engines with it. Their
public defaults differ on purpose and stay theirs (see ``docs/architecture.md``): the real engine's suit one
small model on a CPU or one device (page size 128, ``hbm_utilization`` 0.6, one prefill per step, prompts of 512
tokens), the simulator's a served 7B model on an H100 (page size 16, 0.9 as vLLM, eight prefills, 16k prompts).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from odrive.allocators import make_allocator
from odrive.core.engine import Engine
from odrive.core.executor import Executor
from odrive.core.metrics import MetricsRecorder
from odrive.schedulers import make_scheduler
from odrive.schedulers.config import SchedulerConfig


@dataclass(frozen=True)
class EngineSpec:
    """The policies, the page pool and the limits of one engine.

    - ``scheduler`` / ``allocator``: registered names; ``scheduler_config`` carries the limits, the preemption mode
      and the scheduler's options, ``allocator_kwargs`` the allocator's (``(name, value)`` pairs).
    - ``num_pages`` (the null page included) of ``page_size`` tokens: the pool, from
      :func:`odrive.core.kv_pages.kv_pages_fit` on each side or an override.
    - ``eos_token_ids``: tokens that end a request unless its ``ignore_eos`` (none in the simulator).
    - ``fast_forward``: let the engine run a steady decode run as one step when the executor can time it (the
      simulator's); False steps it one at a time, as the real engine does anyway.
    """

    scheduler_config: SchedulerConfig
    num_pages: int
    page_size: int
    scheduler: str = "fcfs"
    allocator: str = "free-list"
    allocator_kwargs: tuple[tuple[str, Any], ...] = ()
    eos_token_ids: frozenset[int] = frozenset()
    check_invariants: bool = False
    record_steps: bool = True
    fast_forward: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "allocator_kwargs", tuple(dict(self.allocator_kwargs).items()))
        object.__setattr__(self, "eos_token_ids", frozenset(self.eos_token_ids))

    def build(self, executor: Executor, *, metrics: MetricsRecorder | None = None) -> Engine:
        """The engine: a fresh allocator and scheduler, ``executor``, and ``metrics`` (default: a recorder that keeps
        per-step rows when ``record_steps``)."""
        allocator = make_allocator(self.allocator, num_pages=self.num_pages, page_size=self.page_size,
                                   **dict(self.allocator_kwargs))  # fmt: skip
        engine = Engine(
            make_scheduler(self.scheduler, self.scheduler_config, allocator),
            executor,
            metrics=metrics or MetricsRecorder(record_steps=self.record_steps),
            eos_token_ids=self.eos_token_ids,
            check_invariants=self.check_invariants,
        )
        engine.fast_forward = self.fast_forward
        return engine
