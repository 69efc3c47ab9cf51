"""The paged forward on a mesh: ``shard_map`` of ``forward_paged`` over head / column shards."""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from odrive.models.config import LlamaConfig
from odrive.models.kv_cache import KVCaches
from odrive.models.llama import forward_paged
from odrive.parallel.mesh import TP_AXIS, tp_size
from odrive.parallel.specs import kv_cache_spec, local_config, logits_spec, param_specs


@functools.lru_cache(maxsize=32)
def make_sharded_paged_forward(
    config: LlamaConfig, mesh: Mesh, axis: str = TP_AXIS
) -> Callable[..., tuple[jax.Array, KVCaches]]:
    """Jitted tensor-parallel ``forward_paged``: same call as ``make_paged_forward(config)`` —
    ``fn(params, token_ids, positions, kv_caches, slot_mapping, kv_lens, page_indices, cu_q_lens, num_seqs,
    logits_indices)`` with ``kv_caches`` donated — taking params from ``shard_params`` and caches from
    ``shard_kv_caches``/``allocate_sharded_kv_caches``. Batch arrays are replicated; every device runs the
    attention kernel on its own heads and pages, then the row-parallel matmuls are all-reduced. Logits are
    returned sharded over the vocabulary when the LM head is vocab-parallel, replicated otherwise.
    """
    tp = tp_size(mesh, axis)
    local = local_config(config, tp)
    kv = kv_cache_spec(axis)

    def shard_step(params, token_ids, positions, kv_caches, slot_mapping, kv_lens, page_indices, cu_q_lens,
                   num_seqs, logits_indices):  # fmt: skip
        return forward_paged(params, local, token_ids, positions, kv_caches, slot_mapping, kv_lens, page_indices,
                             cu_q_lens, num_seqs, logits_indices, tp_axis=axis)  # fmt: skip

    rep = P()
    sharded = jax.shard_map(
        shard_step,
        mesh=mesh,
        in_specs=(param_specs(config, tp, axis), rep, rep, (kv, kv), rep, rep, rep, rep, rep, rep),
        out_specs=(logits_spec(config, tp, axis), (kv, kv)),
        # The attention kernels' while_loop carries start replicated and become per-device, which the
        # varying-manual-axes type check rejects; the layout above is checked by tests instead.
        check_vma=False,
    )

    def step(params, token_ids, positions, kv_caches, slot_mapping, kv_lens, page_indices, cu_q_lens, num_seqs,
             logits_indices):  # fmt: skip
        # shard_map takes positional arguments only; this keeps make_paged_forward's keyword call working.
        return sharded(params, token_ids, positions, kv_caches, slot_mapping, kv_lens, page_indices, cu_q_lens,
                       num_seqs, logits_indices)  # fmt: skip

    return jax.jit(step, donate_argnums=(3,))
