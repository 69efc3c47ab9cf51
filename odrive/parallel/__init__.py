"""Tensor parallelism for the real engine: the JAX Llama and its paged KV pools sharded over a device mesh.

    mesh = make_tp_mesh(4)
    params = shard_params(model.params, config, mesh)
    kv = allocate_sharded_kv_caches(config, num_pages, page_size, mesh, dtype)
    forward = make_sharded_paged_forward(config, mesh)   # same call as make_paged_forward(config)

See ``odrive.parallel.specs`` for the layout and ``docs/multi_host.md`` for several hosts.
"""

from odrive.parallel.forward import make_sharded_paged_forward
from odrive.parallel.memory import per_device_kv_bytes_per_token, per_device_kv_pages, per_device_weight_bytes
from odrive.parallel.mesh import TP_AXIS, make_tp_mesh, tp_size
from odrive.parallel.shard import (
    allocate_sharded_kv_caches,
    kv_sharding,
    param_shardings,
    shard_kv_caches,
    shard_params,
)
from odrive.parallel.specs import check_tp, kv_cache_spec, local_config, logits_spec, param_specs, vocab_parallel

__all__ = [
    "TP_AXIS",
    "allocate_sharded_kv_caches",
    "check_tp",
    "kv_cache_spec",
    "kv_sharding",
    "local_config",
    "logits_spec",
    "make_sharded_paged_forward",
    "make_tp_mesh",
    "param_shardings",
    "param_specs",
    "per_device_kv_bytes_per_token",
    "per_device_kv_pages",
    "per_device_weight_bytes",
    "shard_kv_caches",
    "shard_params",
    "tp_size",
    "vocab_parallel",
]
