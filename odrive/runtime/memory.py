"""How many KV pages fit: the core formula (:mod:`odrive.core.kv_pages`, shared with the simulator), fed with the real
device's memory."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import jax

from odrive.core.kv_pages import check_hbm_utilization, kv_pages_fit
from odrive.errors import ConfigError

log = logging.getLogger("odrive")


@dataclass(frozen=True)
class MemoryPlan:
    """What the engine chose for its KV pool, and why."""

    device_bytes: int
    source: str  # where device_bytes came from
    hbm_utilization: float
    weight_bytes: int
    page_bytes: int  # all layers, K and V
    pages_fit: int  # floor((device_bytes * hbm_utilization - weight_bytes) / page_bytes)
    pages_useful: int  # the most pages the running set can ever hold (+ the null page)
    num_pages: int  # min of the two, including the null page

    def describe(self) -> str:
        return (
            f"KV pool: {self.num_pages} pages ({self.num_pages * self.page_bytes / 2**20:.1f} MiB) — "
            f"{self.source} {self.device_bytes / 2**30:.2f} GiB × hbm_utilization {self.hbm_utilization} − "
            f"weights {self.weight_bytes / 2**20:.1f} MiB fits {self.pages_fit} pages of "
            f"{self.page_bytes / 2**10:.1f} KiB; the running set can use at most {self.pages_useful}"
        )


@dataclass(frozen=True)
class DeviceMemory:
    """A device's memory as the page plan needs it.

    ``capacity``: the bytes the device has (``hbm_utilization`` is a share of this, as vLLM's
    ``gpu_memory_utilization``); ``limit``: what XLA's allocator may hand out — on a GPU with XLA's default
    preallocation only ``XLA_PYTHON_CLIENT_MEM_FRACTION`` (0.75) of the capacity, which is what
    ``memory_stats()["bytes_limit"]`` reports.
    """

    capacity: int
    limit: int
    source: str


def _allocator_fraction() -> float:
    """The share of device memory XLA's allocator is limited to (``XLA_PYTHON_CLIENT_MEM_FRACTION``, default 0.75;
    1 with ``XLA_PYTHON_CLIENT_ALLOCATOR=platform``)."""
    if os.environ.get("XLA_PYTHON_CLIENT_ALLOCATOR", "").lower() == "platform":
        return 1.0
    try:
        fraction = float(os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.75"))
    except ValueError:
        return 0.75
    return fraction if 0.0 < fraction <= 1.0 else 0.75


def device_memory(device: jax.Device | None = None) -> DeviceMemory:
    """The device's capacity and allocator limit (see :class:`DeviceMemory`).

    CPU (no ``memory_stats()``): the host's available memory. Another platform without ``memory_stats()`` (some
    TPU runtimes) is a ConfigError: its pool must be sized explicitly (``kv_cache_bytes`` or ``num_pages``), never
    from host memory.
    """
    device = device or jax.devices()[0]
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001 - backends without stats raise various errors
        stats = None
    if stats and stats.get("bytes_limit"):
        limit = int(stats["bytes_limit"])
        if device.platform == "cpu":
            return DeviceMemory(limit, limit, "cpu memory limit")
        fraction = _allocator_fraction()
        capacity = int(limit / fraction)
        how = f"{device.platform} memory ({limit / 2**30:.2f} GiB allocator limit / {fraction:g} of the device)"
        return DeviceMemory(capacity, limit, how)
    if device.platform != "cpu":
        raise ConfigError(
            f"{device.platform} device {device} reports no memory_stats(), so the KV pool cannot be sized from its "
            "memory: pass kv_cache_bytes= (odrive serve --kv-cache-bytes) or num_pages="
        )
    with open("/proc/meminfo") as f:
        info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
    return DeviceMemory(info["MemAvailable"], info["MemAvailable"], "available host memory")


def device_memory_bytes(device: jax.Device | None = None) -> tuple[int, str]:
    """``(capacity, where it came from)`` of the device (see :func:`device_memory`)."""
    memory = device_memory(device)
    return memory.capacity, memory.source


def plan_kv_pages(
    *, weight_bytes: int, kv_bytes_per_token: int, page_size: int, hbm_utilization: float,
    max_running: int, max_model_len: int, device_bytes: int | None = None, source: str = "",
    num_pages_override: int | None = None, kv_cache_bytes: int | None = None, allocator_limit: int | None = None,
) -> MemoryPlan:  # fmt: skip
    """Size the page pool with :func:`odrive.core.kv_pages.kv_pages_fit` (the simulator's formula too), capped at what
    can ever be used and at what the allocator can still hand out (``allocator_limit − weight_bytes``).

    ``num_pages_override`` (pages including the null page) replaces the memory-derived count; ``kv_cache_bytes``
    sizes the pool from an explicit byte budget instead of the device's memory.
    """
    check_hbm_utilization(hbm_utilization)
    page_bytes = kv_bytes_per_token * page_size
    pages_useful = max_running * -(-max_model_len // page_size) + 1
    if num_pages_override is not None:
        if num_pages_override < 2:
            raise ConfigError(f"num_pages must be >= 2 (page 0 is the null page), got {num_pages_override}")
        plan = MemoryPlan(
            0,
            "num_pages override",
            hbm_utilization,
            weight_bytes,
            page_bytes,
            num_pages_override,
            pages_useful,
            num_pages_override,
        )
        log.info(plan.describe())
        return plan
    if kv_cache_bytes is not None:
        if kv_cache_bytes < 2 * page_bytes:
            raise ConfigError(
                f"kv_cache_bytes={kv_cache_bytes} holds fewer than 2 pages of {page_bytes} bytes "
                "(page 0 is the null page)"
            )
        pages = kv_cache_bytes // page_bytes
        plan = MemoryPlan(kv_cache_bytes, "kv_cache_bytes given", 1.0, 0, page_bytes, pages, pages_useful,
                          min(pages, pages_useful))  # fmt: skip
        log.info(plan.describe())
        return plan
    if device_bytes is None:
        memory = device_memory()
        device_bytes, source, allocator_limit = memory.capacity, memory.source, memory.limit
    pages_fit = kv_pages_fit(
        device_bytes=device_bytes, hbm_utilization=hbm_utilization, weight_bytes=weight_bytes, page_bytes=page_bytes,
        min_pages=2, what=f"in {source} (page 0 is the null page)",
    )  # fmt: skip
    if allocator_limit is not None and allocator_limit < device_bytes * hbm_utilization:
        allowed = max(0, (allocator_limit - weight_bytes) // page_bytes)
        if allowed < pages_fit:
            log.warning(
                "hbm_utilization=%s asks for %.2f GiB but XLA's allocator allows %.2f GiB: %d of %d pages "
                "(raise XLA_PYTHON_CLIENT_MEM_FRACTION to use more)", hbm_utilization,
                device_bytes * hbm_utilization / 2**30, allocator_limit / 2**30, allowed, pages_fit,
            )  # fmt: skip
            if allowed < 2:
                raise ConfigError(
                    f"XLA's allocator limit ({allocator_limit} bytes) leaves no room for 2 KV pages of {page_bytes} "
                    f"bytes beside {weight_bytes} bytes of weights; raise XLA_PYTHON_CLIENT_MEM_FRACTION"
                )
            pages_fit, source = allowed, f"{source}, capped at the allocator limit"
    plan = MemoryPlan(
        device_bytes,
        source,
        hbm_utilization,
        weight_bytes,
        page_bytes,
        pages_fit,
        pages_useful,
        min(pages_fit, pages_useful),
    )
    log.info(plan.describe())
    return plan
