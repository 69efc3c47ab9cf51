"""Paged KV cache layout: one page pool per K and V shared by all layers.

``kv_caches = (k_pool, v_pool)``, each ``[kv_heads, num_layers * num_pages, page_size, head_dim]``.
Layer ``l`` owns the contiguous page range ``[l * num_pages, (l + 1) * num_pages)``, so each layer's
slice has exactly the per-layer ``kernels`` layout ``[kv_heads, num_pages, page_size, head_dim]``.
Callers (schedulers, block managers) only ever see per-layer page ids ``0 .. num_pages - 1`` (page 0 is
the reserved null page); ``forward_paged`` adds the layer offset. Keeping all layers in one buffer lets
the layer loop be a ``lax.scan`` whose carry is updated in place (no per-layer slice copies).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from odrive.models.config import LlamaConfig
from odrive.models.dtypes import DTypeLike, resolve_dtype

KVCaches = tuple[jax.Array, jax.Array]


def allocate_kv_caches(config: LlamaConfig, num_pages: int, page_size: int, dtype: DTypeLike = jnp.float32) -> KVCaches:
    """Zero-filled ``(k_pool, v_pool)`` holding ``num_pages`` pages (incl. null page 0) per layer."""
    if num_pages < 2 or page_size < 1:
        raise ValueError(f"need num_pages >= 2 (page 0 is reserved) and page_size >= 1, got {num_pages}, {page_size}")
    shape = (config.num_key_value_heads, config.num_hidden_layers * num_pages, page_size, config.head_dim)
    dt = resolve_dtype(dtype)
    return jnp.zeros(shape, dt), jnp.zeros(shape, dt)


def pages_per_layer(kv_caches: KVCaches, config: LlamaConfig) -> int:
    """Number of pages each layer owns in the pool."""
    return kv_caches[0].shape[1] // config.num_hidden_layers


def layer_kv_pages(kv_caches: KVCaches, config: LlamaConfig, layer: int) -> KVCaches:
    """Per-layer ``(k_pages, v_pages)`` view ``[kv_heads, num_pages, page_size, head_dim]`` (for inspection)."""
    n = pages_per_layer(kv_caches, config)
    return tuple(c[:, layer * n : (layer + 1) * n] for c in kv_caches)  # type: ignore[return-value]
