"""The paged forward: one step over a flat ragged batch (prefill chunks and decodes mixed), layer by layer.

A step is a jitted embedding lookup, one jitted layer step per decoder layer and a jitted head. The layer step is
compiled once for every layer (the layer's index, a traced scalar, picks its range of the page pool) and reads the
layer's weights where they lie; the pool is donated to each call, so K/V are written in place. Compared with one
``lax.scan`` over stacked weights this saves the copy XLA:CPU makes of every layer's weights out of the stack (as
many bytes as the matmuls read), at the cost of ``num_layers`` dispatches per step, while compiling as fast.

Under tensor parallelism (``odrive.parallel``) the layer step runs per device in ``shard_map``: each device holds
its heads and MLP columns and their K/V; the row-parallel outputs are summed over the mesh axis.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from kernels import PagedBatch, ragged_paged_attention, write_kv_pages
from odrive.models.config import LlamaConfig
from odrive.models.kv_cache import KVCaches
from odrive.models.llama import Params, attention_output_and_mlp, final_logits, project_qkv, softmax_scale


class StepBatch(NamedTuple):
    """One step's ragged batch as every layer reads it: where its tokens write K/V, and the attention metadata.

    ``positions``/``slot_mapping`` ``[num_tokens]`` (padding rows write into null page 0); the rest as in
    ``kernels.PagedBatch``, with per-layer page ids.
    """

    positions: jax.Array
    slot_mapping: jax.Array
    kv_lens: jax.Array
    page_indices: jax.Array
    cu_q_lens: jax.Array
    num_seqs: jax.Array

    def attention(self, page_offset: jax.Array | int = 0) -> PagedBatch:
        """What the attention kernel reads, page ids shifted by ``page_offset`` (a layer's range of the pool)."""
        return PagedBatch(self.kv_lens, self.page_indices, self.cu_q_lens, self.num_seqs).offset_pages(page_offset)


def paged_layer(
    lp: Params,
    config: LlamaConfig,
    x: jax.Array,
    kv_caches: KVCaches,
    layer: jax.Array,
    batch: StepBatch,
    tp_axis: str | None = None,
) -> tuple[jax.Array, KVCaches]:
    """Decoder layer ``layer`` on hidden states ``x [num_tokens, H]``: write this step's K/V into the layer's pages,
    attend over them, then the output projection and MLP. ``tp_axis``: see ``attention_output_and_mlp``."""
    k_pool, v_pool = kv_caches
    n_pages, page_size = k_pool.shape[1] // config.num_hidden_layers, k_pool.shape[2]
    q, k, v = project_qkv(lp, x, batch.positions, config)
    k_pool, v_pool = write_kv_pages(
        k_pool, v_pool, k.astype(k_pool.dtype), v.astype(v_pool.dtype), batch.slot_mapping + layer * n_pages * page_size
    )
    attn = ragged_paged_attention(
        q, k_pool, v_pool, batch.attention(layer * n_pages), sm_scale=softmax_scale(config),
        sliding_window=config.sliding_window,
    )  # fmt: skip
    return attention_output_and_mlp(lp, x, attn, config, tp_axis), (k_pool, v_pool)


LayerStep = Callable[[Params, jax.Array, KVCaches, jax.Array, StepBatch], tuple[jax.Array, KVCaches]]


class PagedForward:
    """``fn(params, token_ids, positions, kv_caches, slot_mapping, kv_lens, page_indices, cu_q_lens, num_seqs,
    logits_indices) -> (float32 logits [max_seqs, V], kv_caches)``; the passed caches are invalid afterwards.

    :meth:`hidden` runs the layers only; :meth:`logits` and the executor's fused sampling read its result.
    ``layer_step`` replaces the single-device jitted layer (the tensor-parallel one is sharded). ``compute_dtype``
    (e.g. float32 over bfloat16 weights: half the bytes to read, float32 arithmetic) is the hidden states' dtype;
    matmuls against weights of another dtype promote to it. None: the embedding table's dtype.
    """

    def __init__(self, config: LlamaConfig, layer_step: LayerStep | None = None, compute_dtype: str | None = None
                 ) -> None:  # fmt: skip
        self.config = config
        self.compute_dtype = compute_dtype
        self.layer_step = layer_step or jax.jit(
            functools.partial(_layer_step, config=config), donate_argnums=(2,)
        )
        self._layer_ids: list[jax.Array] | None = None

    def hidden(self, params: Params, token_ids: jax.Array, kv_caches: KVCaches, batch: StepBatch
               ) -> tuple[jax.Array, KVCaches]:  # fmt: skip
        """The last layer's hidden states ``[num_tokens, H]`` and the updated caches."""
        if self._layer_ids is None:  # device scalars made once: a step passes them without a host transfer
            self._layer_ids = [jnp.int32(i) for i in range(self.config.num_hidden_layers)]
        x = _embed(params["embed"], token_ids, dtype=self.compute_dtype)
        for lp, layer in zip(params["layers"], self._layer_ids, strict=True):
            x, kv_caches = self.layer_step(lp, x, kv_caches, layer, batch)
        return x, kv_caches

    def __call__(
        self, params: Params, token_ids: jax.Array, positions: jax.Array, kv_caches: KVCaches,
        slot_mapping: jax.Array, kv_lens: jax.Array, page_indices: jax.Array, cu_q_lens: jax.Array,
        num_seqs: jax.Array, logits_indices: jax.Array,
    ) -> tuple[jax.Array, KVCaches]:  # fmt: skip
        batch = StepBatch(positions, slot_mapping, kv_lens, page_indices, cu_q_lens, num_seqs)
        x, kv_caches = self.hidden(params, token_ids, kv_caches, batch)
        return self.logits(params, x, logits_indices), kv_caches

    def logits(self, params: Params, x: jax.Array, logits_indices: jax.Array) -> jax.Array:
        """Float32 logits of the rows ``logits_indices`` of the last hidden states."""
        return _head(_head_params(params), x, logits_indices, config=self.config)


def _layer_step(lp: Params, x: jax.Array, kv_caches: KVCaches, layer: jax.Array, batch: StepBatch, *,
                config: LlamaConfig) -> tuple[jax.Array, KVCaches]:  # fmt: skip
    return paged_layer(lp, config, x, kv_caches, layer, batch)


@functools.partial(jax.jit, static_argnames=("dtype",))
def _embed(embed: jax.Array, token_ids: jax.Array, dtype: str | None = None) -> jax.Array:
    x = jnp.take(embed, token_ids, axis=0)
    return x if dtype is None else x.astype(dtype)


def _head_params(params: Params) -> dict[str, Any]:
    return {k: v for k, v in params.items() if k != "layers"}


@functools.partial(jax.jit, static_argnames=("config",))
def _head(head_params: dict[str, Any], x: jax.Array, logits_indices: jax.Array, *, config: LlamaConfig) -> jax.Array:
    return final_logits(head_params, config, x[logits_indices])


@functools.lru_cache(maxsize=32)
def make_paged_forward(config: LlamaConfig, compute_dtype: str | None = None) -> PagedForward:
    """The single-device :class:`PagedForward` of ``config`` (cached per config and compute dtype)."""
    return PagedForward(config, compute_dtype=compute_dtype)
