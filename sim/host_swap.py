"""Swap preemption's modeled cost, shared by the simulator's executors (kept out of :mod:`sim.executor`, which
imports :mod:`sim.latency`, so that latency models' own executors can use it too)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from odrive.core.executor import SwapOps
from odrive.errors import ConfigError

if TYPE_CHECKING:
    from sim.hardware import Accelerator
    from sim.model_spec import ModelSpec


def swap_rates(
    model: ModelSpec | None = None, accelerator: Accelerator | None = None, tp: int = 1
) -> tuple[float | None, float | None]:
    """``(kv_bytes_per_token, host_bandwidth)`` of swap preemption: ``model.kv_bytes_per_token`` ÷ ``tp`` (each
    device copies its shard; the links run in parallel) and ``accelerator.host_bandwidth``; ``None`` for what
    is missing (e.g. a latency model that carries no model/accelerator)."""
    kv = getattr(model, "kv_bytes_per_token", 0) / tp
    return (kv or None), getattr(accelerator, "host_bandwidth", None)


def modeled_swap_seconds(executor: object, ops: SwapOps) -> float:
    """``ops``' copy time at ``executor``'s ``kv_bytes_per_token`` and ``host_bandwidth``; a clear error
    without them."""
    kv_bytes_per_token = getattr(executor, "kv_bytes_per_token", None)
    host_bandwidth = getattr(executor, "host_bandwidth", None)
    if not kv_bytes_per_token or not host_bandwidth:
        model = getattr(executor, "latency_model", None)
        raise ConfigError(
            f"{type(executor).__name__} (latency model {type(model).__name__}) has no kv_bytes_per_token / "
            "host_bandwidth to model swap preemption: pass them (e.g. from the SimConfig's model spec and "
            "accelerator, as sim.simulator.build_engine does) or use preemption_mode='recompute'"
        )
    return ops.num_pages * ops.page_size * kv_bytes_per_token / host_bandwidth


class HostSwap:
    """Mixin: :meth:`Executor.swap` modeled as ``pages × page_size × kv_bytes_per_token / host_bandwidth`` seconds
    (out and in run one after the other, before the step's compute). Set both rates in ``__init__``."""

    kv_bytes_per_token: float | None = None
    host_bandwidth: float | None = None

    def swap_seconds(self, ops: SwapOps) -> float:
        return modeled_swap_seconds(self, ops)

    def swap(self, ops: SwapOps) -> float:
        return self.swap_seconds(ops)
