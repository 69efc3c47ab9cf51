"""Sizing the real engine's KV pool from device memory: capacity vs XLA's allocator limit, devices without stats."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pytest

from odrive.errors import ConfigError
from odrive.runtime import memory
from odrive.runtime.memory import device_memory, plan_kv_pages

GIB = 2**30


@dataclass
class FakeDevice:
    """Stands in for a ``jax.Device``: a platform and what its ``memory_stats()`` reports."""

    platform: str
    stats: dict | None

    def memory_stats(self) -> dict | None:
        return self.stats


def _plan(**kw):
    base = dict(weight_bytes=2 * GIB, kv_bytes_per_token=2**17, page_size=16, hbm_utilization=0.6,
                max_running=10**6, max_model_len=10**6)  # fmt: skip
    return plan_kv_pages(**{**base, **kw})


def test_gpu_capacity_is_the_device_not_the_preallocated_pool(monkeypatch):
    # XLA preallocates 75 % of an 80 GiB GPU by default and reports that as bytes_limit.
    monkeypatch.delenv("XLA_PYTHON_CLIENT_MEM_FRACTION", raising=False)
    monkeypatch.delenv("XLA_PYTHON_CLIENT_ALLOCATOR", raising=False)
    gpu = FakeDevice("gpu", {"bytes_limit": int(0.75 * 80 * GIB), "bytes_in_use": 0})
    mem = device_memory(gpu)
    assert mem.capacity == 80 * GIB and mem.limit == int(0.75 * 80 * GIB)
    monkeypatch.setattr(memory, "device_memory", lambda device=None: mem)
    plan = _plan()
    page = 16 * 2**17
    assert plan.pages_fit == (int(80 * GIB * 0.6) - 2 * GIB) // page  # 0.6 of 80 GiB, not of 60 GiB
    assert plan.device_bytes == 80 * GIB


def test_utilization_beyond_the_allocator_limit_is_capped_with_a_warning(monkeypatch, caplog):
    monkeypatch.delenv("XLA_PYTHON_CLIENT_MEM_FRACTION", raising=False)
    gpu = FakeDevice("gpu", {"bytes_limit": 60 * GIB})
    monkeypatch.setattr(memory, "device_memory", lambda device=None: device_memory(gpu))
    with caplog.at_level(logging.WARNING, logger="odrive"):
        plan = _plan(hbm_utilization=0.9)  # 72 GiB asked, the allocator allows 60
    assert plan.pages_fit == (60 * GIB - 2 * GIB) // (16 * 2**17)
    assert "XLA_PYTHON_CLIENT_MEM_FRACTION" in caplog.text and "allocator limit" in plan.source


def test_mem_fraction_and_platform_allocator_are_honoured(monkeypatch):
    gpu = FakeDevice("gpu", {"bytes_limit": 72 * GIB})
    monkeypatch.setenv("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.9")
    assert device_memory(gpu).capacity == 80 * GIB
    monkeypatch.setenv("XLA_PYTHON_CLIENT_ALLOCATOR", "platform")
    assert device_memory(gpu).capacity == 72 * GIB


def test_accelerator_without_memory_stats_is_a_clear_error_not_host_memory():
    tpu = FakeDevice("tpu", None)
    with pytest.raises(ConfigError, match=r"reports no memory_stats\(\).*kv_cache_bytes"):
        device_memory(tpu)


def test_cpu_without_stats_uses_available_host_memory():
    mem = device_memory(FakeDevice("cpu", None))
    assert mem.source == "available host memory" and mem.capacity == mem.limit > 0


def test_explicit_kv_cache_bytes_sizes_the_pool(monkeypatch):
    def no_memory(device=None):
        raise AssertionError("an explicit budget must not read device memory")

    monkeypatch.setattr(memory, "device_memory", no_memory)
    page = 16 * 2**17
    plan = _plan(kv_cache_bytes=100 * page + 5)
    assert plan.num_pages == 100 and plan.source == "kv_cache_bytes given"
    with pytest.raises(ConfigError, match="fewer than 2 pages"):
        _plan(kv_cache_bytes=page)


def test_create_odriver_takes_kv_cache_bytes(tiny_checkpoint):
    import odrive

    model = odrive.load_model(tiny_checkpoint)
    page_bytes = model.config.kv_bytes_per_token(model.dtype) * 4
    surge = odrive.vSurge.create_odriver(model, max_prefill_length=16, page_size=4, max_length=32,
                                         max_concurrent_decodes=64, kv_cache_bytes=9 * page_bytes)  # fmt: skip
    assert surge.memory_plan.num_pages == 9 and surge.engine.allocator.num_pages == 9
