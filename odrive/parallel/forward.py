"""The paged forward on a mesh: each layer step in ``shard_map`` over head / column shards."""

from __future__ import annotations

import functools

import jax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from odrive.models.config import LlamaConfig
from odrive.models.kv_cache import KVCaches
from odrive.models.llama import Params
from odrive.models.paged_forward import PagedForward, StepBatch, paged_layer
from odrive.parallel.mesh import TP_AXIS, tp_size
from odrive.parallel.specs import kv_cache_spec, layer_param_specs, local_config


@functools.lru_cache(maxsize=32)
def make_sharded_paged_forward(
    config: LlamaConfig, mesh: Mesh, axis: str = TP_AXIS, compute_dtype: str | None = None
) -> PagedForward:
    """Tensor-parallel :class:`PagedForward`: same call as ``make_paged_forward(config)``, taking params from
    ``shard_params`` and caches from ``shard_kv_caches``/``allocate_sharded_kv_caches``. Batch arrays are
    replicated; every device runs each layer on its own heads and pages, then the row-parallel matmuls are
    all-reduced. The embedding and the head run on the sharded arrays as they lie (logits come out sharded over
    the vocabulary when the LM head is vocab-parallel).
    """
    tp = tp_size(mesh, axis)
    local = local_config(config, tp)
    kv = kv_cache_spec(axis)

    def shard_layer(lp: Params, x: jax.Array, kv_caches: KVCaches, layer: jax.Array, batch: StepBatch
                    ) -> tuple[jax.Array, KVCaches]:  # fmt: skip
        return paged_layer(lp, local, x, kv_caches, layer, batch, tp_axis=axis)

    rep = P()
    sharded = jax.shard_map(
        shard_layer,
        mesh=mesh,
        in_specs=(layer_param_specs(config, axis), rep, (kv, kv), rep, StepBatch(*(rep,) * len(StepBatch._fields))),
        out_specs=(rep, (kv, kv)),
        # The attention kernels' while_loop carries start replicated and become per-device, which the
        # varying-manual-axes type check rejects; the layout above is checked by tests instead.
        check_vma=False,
    )
    return PagedForward(config, layer_step=jax.jit(sharded, donate_argnums=(2,)), compute_dtype=compute_dtype)
