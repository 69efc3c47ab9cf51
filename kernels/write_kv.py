"""Scatter a step's new keys/values into the paged KV cache."""

from __future__ import annotations

import jax
import jax.numpy as jnp


@jax.jit
def write_kv_pages(
    k_pages: jax.Array, v_pages: jax.Array, k: jax.Array, v: jax.Array, slot_mapping: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Write token ``i``'s key/value into flat slot ``slot_mapping[i]`` (= page_id * page_size + offset).

    ``k_pages``/``v_pages``: ``[kv_heads, num_pages, page_size, head_dim]``; ``k``/``v``:
    ``[num_tokens, kv_heads, head_dim]``. Padding tokens should point into the null page 0. The update is
    functional (``.at[].set``), so donating the caches in an enclosing ``jit`` makes it in-place.
    """
    return _scatter(k_pages, k, slot_mapping), _scatter(v_pages, v, slot_mapping)


def _scatter(pages: jax.Array, new: jax.Array, slot_mapping: jax.Array) -> jax.Array:
    kv_heads, num_pages, page_size, head_dim = pages.shape
    flat = pages.reshape(kv_heads, num_pages * page_size, head_dim)
    updates = jnp.swapaxes(new, 0, 1).astype(pages.dtype)
    flat = flat.at[:, slot_mapping.astype(jnp.int32)].set(updates, mode="drop")
    return flat.reshape(pages.shape)
