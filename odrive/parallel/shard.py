"""Place params and KV pools on a mesh with ``NamedSharding`` (``jax.device_put``)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding

from odrive.models.config import LlamaConfig
from odrive.models.dtypes import DTypeLike, resolve_dtype
from odrive.models.kv_cache import KVCaches
from odrive.parallel.mesh import TP_AXIS, tp_size
from odrive.parallel.specs import check_tp, kv_cache_spec, param_specs


def param_shardings(config: LlamaConfig, mesh: Mesh, axis: str = TP_AXIS) -> dict[str, Any]:
    """A NamedSharding per parameter."""
    specs = param_specs(config, tp_size(mesh, axis), axis)
    return jax.tree.map(lambda spec: NamedSharding(mesh, spec), specs)


def shard_params(params: dict[str, Any], config: LlamaConfig, mesh: Mesh, axis: str = TP_AXIS) -> dict[str, Any]:
    """Copy ``params`` onto ``mesh``: attention heads and the MLP split over ``axis`` (see ``specs``)."""
    check_tp(config, tp_size(mesh, axis))
    return jax.device_put(params, param_shardings(config, mesh, axis))


def kv_sharding(mesh: Mesh, axis: str = TP_AXIS) -> NamedSharding:
    return NamedSharding(mesh, kv_cache_spec(axis))


def shard_kv_caches(caches: KVCaches, mesh: Mesh, axis: str = TP_AXIS) -> KVCaches:
    """Copy ``(k_pool, v_pool)`` onto ``mesh``, split on the kv-heads axis."""
    tp = tp_size(mesh, axis)
    if caches[0].shape[0] % tp:
        raise ValueError(f"{caches[0].shape[0]} kv heads do not split over tensor_parallel_size={tp}")
    sharding = kv_sharding(mesh, axis)
    return jax.device_put(caches[0], sharding), jax.device_put(caches[1], sharding)


def allocate_sharded_kv_caches(
    config: LlamaConfig, num_pages: int, page_size: int, mesh: Mesh, dtype: DTypeLike = jnp.float32,
    axis: str = TP_AXIS,
) -> KVCaches:  # fmt: skip
    """Zero ``(k_pool, v_pool)`` created directly in shards (no device ever holds the whole pool);
    same layout as ``odrive.models.kv_cache.allocate_kv_caches``."""
    if num_pages < 2 or page_size < 1:
        raise ValueError(f"need num_pages >= 2 (page 0 is reserved) and page_size >= 1, got {num_pages}, {page_size}")
    check_tp(config, tp_size(mesh, axis))
    shape = (config.num_key_value_heads, config.num_hidden_layers * num_pages, page_size, config.head_dim)
    dt = resolve_dtype(dtype)
    sharding = kv_sharding(mesh, axis)
    zeros = jax.jit(lambda: (jnp.zeros(shape, dt), jnp.zeros(shape, dt)), out_shardings=(sharding, sharding))
    return zeros()
