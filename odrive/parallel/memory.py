"""KV pages per device under tensor parallelism: the engine's page formula applied to one device.

With ``tp`` devices each device holds every page id but only ``num_key_value_heads / tp`` heads of it, so
a page costs ``page_bytes / tp`` per device; column/row-parallel weights cost ``1 / tp`` of their bytes,
replicated ones (embeddings, norms, a replicated LM head) their full size. Hence

    pages = floor((device_bytes * hbm_utilization - weight_bytes_per_device) / (page_bytes / tp))

— the same ``plan_kv_pages`` formula (:func:`odrive.core.kv_pages.kv_pages_fit`), fed per-device numbers from
the core's :class:`~odrive.core.kv_pages.DecoderShape` (``LlamaConfig.decoder_shape``), as the simulator's are.
It is the same on every device, and one allocator hands out page ids for all of them. Since replicated weights
do not shrink, pages grow slightly more than ``tp``-fold over one device of the same memory (the model no longer
has to fit on one). :func:`per_device_weight_bytes` derives the weights from the PartitionSpecs the engine shards
with instead: a cross-check of that formula (tests/test_kv_pages.py).
"""

from __future__ import annotations

import math

import jax
import numpy as np

from odrive.models.config import LlamaConfig
from odrive.models.dtypes import DTypeLike, resolve_dtype
from odrive.models.llama import param_shapes
from odrive.parallel.specs import check_tp, param_specs
from odrive.runtime.memory import MemoryPlan, device_memory, plan_kv_pages


def per_device_weight_bytes(config: LlamaConfig, tp: int, dtype: DTypeLike | None = None) -> int:
    """Bytes of params one device holds under the layout of ``odrive.parallel.specs`` (counted from the
    PartitionSpecs; equals ``config.decoder_shape.weight_bytes_per_device``, which the page plan uses)."""
    check_tp(config, tp)
    itemsize = resolve_dtype(config.torch_dtype if dtype is None else dtype).itemsize
    shapes, specs = param_shapes(config), param_specs(config, tp, "model")
    leaves = jax.tree.leaves(shapes, is_leaf=lambda x: isinstance(x, tuple))
    split = jax.tree.leaves(jax.tree.map(lambda s: any(a is not None for a in s), specs))
    return sum(math.prod(shape) * itemsize // (tp if s else 1) for shape, s in zip(leaves, split, strict=True))


def per_device_kv_bytes_per_token(config: LlamaConfig, tp: int, dtype: DTypeLike | None = None) -> int:
    """K and V bytes of one token, all layers, on one device (its ``kv_heads / tp`` heads)."""
    check_tp(config, tp)
    itemsize = resolve_dtype(config.torch_dtype if dtype is None else dtype).itemsize
    return config.decoder_shape.kv_bytes_per_token(itemsize, tp)


def smallest_over_processes(num_bytes: int) -> int:
    """The smallest ``num_bytes`` any process passed, floored to whole MiB (a collective: every process calls
    it). An engine spanning processes runs one schedule everywhere, so every process must size the same page
    pool. MiB, because JAX moves 32-bit integers unless x64 is on."""
    from jax.experimental import multihost_utils

    mib = np.array([num_bytes // 2**20], np.int32)
    return int(np.min(multihost_utils.process_allgather(mib))) * 2**20


def per_device_kv_pages(
    config: LlamaConfig, *, tp: int, page_size: int, hbm_utilization: float, max_running: int, max_model_len: int,
    dtype: DTypeLike | None = None, kv_dtype: DTypeLike | None = None, devices: list[jax.Device] | None = None,
    device_bytes: int | None = None, num_pages_override: int | None = None, kv_cache_bytes: int | None = None,
) -> MemoryPlan:  # fmt: skip
    """The page pool for a ``tp``-way sharded model: ``plan_kv_pages`` on per-device weights and page bytes.

    ``device_bytes`` defaults to the smallest memory among ``devices`` (default: the first ``tp`` devices) —
    measured on this process's devices and, when ``devices`` span several processes, the smallest over all
    processes; on CPU the "devices" share host memory, so that number is the host's, not a per-device share.
    """
    allocator_limit = None
    if device_bytes is None and kv_cache_bytes is None and num_pages_override is None:
        devices = list(devices or jax.devices()[:tp])
        local = [d for d in devices if d.process_index == jax.process_index()]
        memory = min((device_memory(d) for d in local), key=lambda m: (m.capacity, m.limit))
        device_bytes, allocator_limit = memory.capacity, memory.limit
        source = f"per-device (tp={tp}) {memory.source}"
        if len(local) < len(devices):  # the mesh spans processes: all of them must size the same pool
            device_bytes = smallest_over_processes(device_bytes)
            allocator_limit = smallest_over_processes(allocator_limit)
            source += f", smallest of {jax.process_count()} processes"
    else:
        source = f"per-device (tp={tp}) given"
    check_tp(config, tp)
    itemsize = resolve_dtype(config.torch_dtype if dtype is None else dtype).itemsize
    return plan_kv_pages(
        weight_bytes=config.decoder_shape.weight_bytes_per_device(tp, itemsize),
        kv_bytes_per_token=per_device_kv_bytes_per_token(config, tp, kv_dtype or dtype),
        page_size=page_size, hbm_utilization=hbm_utilization, max_running=max_running, max_model_len=max_model_len,
        device_bytes=device_bytes, source=source, num_pages_override=num_pages_override,
        kv_cache_bytes=kv_cache_bytes, allocator_limit=allocator_limit,
    )  # fmt: skip
