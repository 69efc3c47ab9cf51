"""Swap preemption's and copy-on-write's modeled cost, shared by the simulator's executors (kept out of
:mod:`sim.executor`, which imports :mod:`sim.latency`, so that latency models' own executors can use it too)."""

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
    return page_transfer_seconds(ops.num_pages, ops.page_size, kv_bytes_per_token, host_bandwidth)


def page_transfer_seconds(num_pages: int, page_size: int, kv_bytes_per_token: float, bandwidth: float) -> float:
    """Seconds to move ``num_pages`` K/V pages of ``page_size`` tokens at ``bandwidth`` bytes/s."""
    return num_pages * page_size * kv_bytes_per_token / bandwidth


def modeled_copy_seconds(executor: object, copies: list[tuple[int, int]], page_size: int) -> float:
    """Copy-on-write of ``copies`` (device page → device page: each page read and written once) at ``executor``'s
    ``kv_bytes_per_token`` and ``device_bandwidth`` (HBM bytes/s); 0 without them (copies are then taken as free)."""
    kv_bytes_per_token = getattr(executor, "kv_bytes_per_token", None)
    bandwidth = getattr(executor, "device_bandwidth", None)
    if not copies or not kv_bytes_per_token or not bandwidth:
        return 0.0
    return page_transfer_seconds(2 * len(copies), page_size, kv_bytes_per_token, bandwidth)


class HostSwap:
    """Mixin: :meth:`Executor.swap` modeled as ``pages × page_size × kv_bytes_per_token / host_bandwidth`` seconds
    (out and in run one after the other, before the step's compute). Set both rates in ``__init__``."""

    kv_bytes_per_token: float | None = None
    host_bandwidth: float | None = None

    def swap_seconds(self, ops: SwapOps) -> float:
        return modeled_swap_seconds(self, ops)

    def swap(self, ops: SwapOps) -> float:
        return self.swap_seconds(ops)
