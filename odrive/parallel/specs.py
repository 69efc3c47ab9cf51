"""How the Llama params and the paged KV pools are split over the tensor-parallel axis (Megatron layout).

Attention: ``wq``/``wk``/``wv`` are column-parallel (each device owns whole heads: ``Hq/tp`` query and
``Hkv/tp`` kv heads, contiguous, so grouped-query pairing stays local), ``wo`` row-parallel. MLP:
``w_gate``/``w_up`` column-parallel, ``w_down`` row-parallel. The two row-parallel outputs are summed
over the axis (one all-reduce each per layer). The LM head is vocab-parallel when untied and divisible
(logits come out sharded over the vocabulary); embeddings and norms are replicated. KV pools
``[kv_heads, layers*pages, page_size, head_dim]`` are split on ``kv_heads``: every device holds every page
id, for its own heads, so one allocator and one page table serve all devices.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from jax.sharding import PartitionSpec as P

from odrive.models.config import LlamaConfig

_COLUMN = ("wq", "wk", "wv", "w_gate", "w_up")  # [in, out]: split out
_ROW = ("wo", "w_down")  # [in, out]: split in
_COLUMN_BIAS = ("bq", "bk", "bv")  # [out]: split with their projection's heads


def check_tp(config: LlamaConfig, tp: int) -> None:
    """Raise ValueError unless query heads, kv heads and the MLP width all divide by ``tp``."""
    if tp < 1:
        raise ValueError(f"tensor_parallel_size must be >= 1, got {tp}")
    sizes = {
        "num_attention_heads": config.num_attention_heads,
        "num_key_value_heads": config.num_key_value_heads,
        "intermediate_size": config.intermediate_size,
    }
    bad = {k: v for k, v in sizes.items() if v % tp}
    if bad:
        raise ValueError(
            f"tensor_parallel_size={tp} must divide {', '.join(f'{k}={v}' for k, v in bad.items())} "
            "(kv-head replication for tp > num_key_value_heads is not supported)"
        )


def vocab_parallel(config: LlamaConfig, tp: int) -> bool:
    """Whether the LM head is split over the vocabulary (untied and ``vocab_size`` divisible by ``tp``)."""
    return tp > 1 and not config.tie_word_embeddings and config.vocab_size % tp == 0


def local_config(config: LlamaConfig, tp: int) -> LlamaConfig:
    """The config one device sees inside ``shard_map``: its share of heads and MLP width."""
    check_tp(config, tp)
    return dataclasses.replace(
        config,
        num_attention_heads=config.num_attention_heads // tp,
        num_key_value_heads=config.num_key_value_heads // tp,
        intermediate_size=config.intermediate_size // tp,
        head_dim=config.head_dim,
    )


def layer_param_specs(config: LlamaConfig, axis: str) -> dict[str, P]:
    """A PartitionSpec per parameter of one layer."""
    layers = {name: P() for name in ("attn_norm", "mlp_norm")}
    layers.update({name: P(None, axis) for name in _COLUMN})
    layers.update({name: P(axis, None) for name in _ROW})
    if config.qkv_bias:
        layers.update({name: P(axis) for name in _COLUMN_BIAS})
    if config.qk_norm:
        layers.update(q_norm=P(), k_norm=P())  # over head_dim: every device normalises its own heads
    return layers


def param_specs(config: LlamaConfig, tp: int, axis: str) -> dict[str, Any]:
    """A PartitionSpec per parameter, in the params pytree's nesting."""
    layer = layer_param_specs(config, axis)
    specs: dict[str, Any] = {
        "embed": P(),
        "layers": [dict(layer) for _ in range(config.num_hidden_layers)],
        "final_norm": P(),
    }
    if not config.tie_word_embeddings:
        specs["lm_head"] = P(None, axis) if vocab_parallel(config, tp) else P()
    return specs


def kv_cache_spec(axis: str) -> P:
    """K and V pools are split on their leading kv-heads axis."""
    return P(axis, None, None, None)


def logits_spec(config: LlamaConfig, tp: int, axis: str) -> P:
    """Sharding of the ``[max_seqs, vocab]`` logits the sharded forward returns."""
    return P(None, axis) if vocab_parallel(config, tp) else P()
