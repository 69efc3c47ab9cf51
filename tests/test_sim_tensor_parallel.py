"""A tensor-parallel replica in the simulator: per-device page count, the latency model's ``tp``, config errors."""

from __future__ import annotations

import math

import pytest

from odrive.errors import ConfigError
from sim.config import SimConfig
from sim.hardware import get_accelerator
from sim.model_spec import get_model_spec, num_kv_pages
from sim.simulator import build_engine


def test_per_device_pages_follow_the_sharded_formula() -> None:
    acc, model = get_accelerator("h100-80gb"), get_model_spec("llama-2-7b")
    one = num_kv_pages(acc, model, 16, 0.9)
    two = num_kv_pages(acc, model, 16, 0.9, tp=2)
    # As the real engine shards it: matmuls and the (untied, vocab-parallel) LM head split in two, the embedding
    # table and the norms whole on each device; half of every page (32 KV heads split evenly).
    h, v, n = model.hidden_size, model.vocab_size, model.num_layers
    replicated = v * h + 2 * n * h + h
    split = n * model.layer_matmul_params + v * h
    weights = (replicated + split // 2) * model.dtype_bytes
    expected = math.floor((acc.hbm_bytes * 0.9 - weights) / (model.kv_bytes_per_page(16) / 2))
    assert two == expected
    assert two > 2 * one  # the weights' share shrinks too


def test_uneven_heads_round_up_per_device() -> None:
    acc, model = get_accelerator("h100-80gb"), get_model_spec("llama-3-8b")  # 8 KV heads
    pages = num_kv_pages(acc, model, 16, 0.9, tp=3)
    per_page = model.kv_bytes_per_page(16) * 3 / 8  # ceil(8 / 3) = 3 heads per device
    # ceil(32 / 3) = 11 query heads, 3 KV heads, ceil(14336 / 3) MLP columns; the vocabulary divides by 3.
    h, d = model.hidden_size, model.head_dim
    layer = h * (11 * d + 2 * 3 * d) + 11 * d * h + 3 * h * math.ceil(14336 / 3)
    replicated = model.vocab_size * h + 2 * model.num_layers * h + h
    weights = (model.num_layers * layer + replicated + model.vocab_size * h // 3) * model.dtype_bytes
    assert pages == math.floor((acc.hbm_bytes * 0.9 - weights) / per_page)


def test_sim_config_tensor_parallel_size_reaches_pages_and_latency() -> None:
    engine = build_engine(SimConfig(tensor_parallel_size=2))
    assert engine.executor.latency_model.tp == 2
    acc, model = get_accelerator("h100-80gb"), get_model_spec("llama-2-7b")
    assert engine.allocator.num_pages == num_kv_pages(acc, model, 16, 0.9, tp=2)
    # The older spelling through latency_kwargs means the same replica.
    legacy = build_engine(SimConfig(latency_kwargs=(("tp", 2),)))
    assert legacy.allocator.num_pages == engine.allocator.num_pages


def test_swap_tier_holds_every_shard_of_a_page() -> None:
    # swap_space_gib is host memory for all devices' shards, as the real engine sizes it.
    one = SimConfig(preemption_mode="swap", swap_space_gib=1.0)
    two = SimConfig(preemption_mode="swap", swap_space_gib=1.0, tensor_parallel_size=2)
    assert two.host_swap_pages() == one.host_swap_pages() > 0


def test_bad_tensor_parallel_configs_are_named() -> None:
    with pytest.raises(ConfigError, match="disagrees"):
        build_engine(SimConfig(tensor_parallel_size=2, latency_kwargs=(("tp", 4),)))
    with pytest.raises(ConfigError, match=">= 1"):
        build_engine(SimConfig(tensor_parallel_size=0))
    with pytest.raises(ConfigError, match="single-device profile"):
        build_engine(SimConfig(model="tiny-bench", latency_model="calibrated", tensor_parallel_size=2))
