"""What a simulated executor needs to know besides the scheduler's config."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class ExecutorSetup:
    """The engine around a simulated executor.

    ``page_size``/``max_length``: the engine's page size and longest sequence (prompt + output; ``None``:
    ``scheduler_config.max_model_len``, else ``2 × max_prefill_length`` as ``vSurge.create_odriver``), for latency
    models that reproduce the real engine's compiled shapes. ``clock``: the simulator's current time, for models
    that depend on idleness. ``kv_bytes_per_token``/``host_bandwidth``: the swap-preemption rates (per device).
    """

    page_size: int | None = None
    max_length: int | None = None
    clock: Callable[[], float] | None = None
    kv_bytes_per_token: float | None = None
    host_bandwidth: float | None = None


NO_SETUP = ExecutorSetup()
"""Nothing known about the engine around the executor: the default of ``make_executor``/``executor_for``."""
