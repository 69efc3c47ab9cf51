"""How many KV pages fit: the core formula (:mod:`odrive.kv_pages`, shared with the simulator), fed with the real
device's memory."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import jax

from odrive.errors import ConfigError
from odrive.kv_pages import kv_pages_fit

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


def device_memory_bytes(device: jax.Device | None = None) -> tuple[int, str]:
    """The device's memory limit; on CPU (no memory_stats) the host's available memory."""
    device = device or jax.devices()[0]
    stats = None
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001 - backends without stats raise various errors
        stats = None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"]), f"{device.platform} memory limit"
    with open("/proc/meminfo") as f:
        info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
    return info["MemAvailable"], "available host memory"


def plan_kv_pages(
    *, weight_bytes: int, kv_bytes_per_token: int, page_size: int, hbm_utilization: float,
    max_running: int, max_model_len: int, device_bytes: int | None = None, source: str = "",
    num_pages_override: int | None = None,
) -> MemoryPlan:  # fmt: skip
    """Size the page pool with :func:`odrive.kv_pages.kv_pages_fit` (the simulator's formula too), capped at what
    can ever be used.

    ``num_pages_override`` (pages including the null page) replaces the memory-derived count.
    """
    if not 0.0 < hbm_utilization <= 1.0:
        raise ConfigError(f"hbm_utilization must be in (0, 1], got {hbm_utilization}")
    page_bytes = kv_bytes_per_token * page_size
    pages_useful = max_running * -(-max_model_len // page_size) + 1
    if num_pages_override is not None:
        if num_pages_override < 2:
            raise ConfigError(f"num_pages must be >= 2 (page 0 is the null page), got {num_pages_override}")
        plan = MemoryPlan(0, "num_pages override", hbm_utilization, weight_bytes, page_bytes, num_pages_override,
                          pages_useful, num_pages_override)
        log.info(plan.describe())
        return plan
    if device_bytes is None:
        device_bytes, source = device_memory_bytes()
    pages_fit = kv_pages_fit(
        device_bytes=device_bytes, hbm_utilization=hbm_utilization, weight_bytes=weight_bytes, page_bytes=page_bytes,
        min_pages=2, what=f"in {source} (page 0 is the null page)",
    )  # fmt: skip
    plan = MemoryPlan(device_bytes, source, hbm_utilization, weight_bytes, page_bytes, pages_fit, pages_useful,
                      min(pages_fit, pages_useful))
    log.info(plan.describe())
    return plan
