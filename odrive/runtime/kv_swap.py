"""Swap preemption on the real engine: copy a request's K/V pages (every layer) to host memory and back; and
copy-on-write's device page copies."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from odrive.allocators.base import NULL_PAGE
from odrive.models.kv_cache import KVCaches


def _pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


@jax.jit
def _gather(pool: jax.Array, rows: jax.Array) -> jax.Array:
    return pool[:, rows]


def _set_rows(pool: jax.Array, rows: jax.Array, values: jax.Array) -> jax.Array:
    return pool.at[:, rows].set(values)


_scatter = jax.jit(_set_rows, donate_argnums=0)  # the pool is updated in place


def _copy_pool_rows(pool: jax.Array, src: jax.Array, dst: jax.Array) -> jax.Array:
    return pool.at[:, dst].set(pool[:, src])


_copy_rows = jax.jit(_copy_pool_rows, donate_argnums=0)


def copy_kv_rows(kv: KVCaches, src: np.ndarray, dst: np.ndarray) -> KVCaches:
    """Pool rows ``src`` copied onto rows ``dst`` in both pools (all reads before any write; ``dst`` distinct, or
    repeating ``src``'s row: padding)."""
    src_idx, dst_idx = jnp.asarray(src), jnp.asarray(dst)
    return _copy_rows(kv[0], src_idx, dst_idx), _copy_rows(kv[1], src_idx, dst_idx)


def _to_host(x: jax.Array) -> np.ndarray:
    """``x`` in this process's memory; a pool sharded over several processes' devices is all-gathered (a
    collective: every process swaps the same pages at the same step, as they run the same schedule)."""
    if x.is_fully_addressable:
        return np.asarray(x)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


class HostKVStore:
    """Host copies of swapped-out requests' K/V, keyed by request id.

    The pool layout is ``[kv_heads, num_layers * pages_per_layer, page_size, head_dim]`` with layer ``l``
    owning rows ``[l * pages_per_layer, (l + 1) * pages_per_layer)``; a request's page ``p`` is row
    ``l * pages_per_layer + p`` in every layer. Row counts are padded to powers of two (padding rows point
    at the null page, the engine's scratch page) so copies compile a bounded number of times.
    """

    def __init__(self, num_layers: int, pages_per_layer: int) -> None:
        self.num_layers = num_layers
        self.pages_per_layer = pages_per_layer
        self._host: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def rows(self, pages: list[int]) -> tuple[np.ndarray, int]:
        """Pool rows of ``pages`` in every layer (layer-major), padded; and the unpadded count."""
        pages_arr = np.asarray(pages, np.int32)
        rows = (np.arange(self.num_layers, dtype=np.int32)[:, None] * self.pages_per_layer + pages_arr).reshape(-1)
        padded = np.full(_pow2(len(rows)), NULL_PAGE, np.int32)
        padded[: len(rows)] = rows
        return padded, len(rows)

    def swap_out(self, kv: KVCaches, request_id: str, pages: list[int]) -> None:
        rows, n = self.rows(pages)
        idx = jnp.asarray(rows)
        self._host[request_id] = (_to_host(_gather(kv[0], idx))[:, :n], _to_host(_gather(kv[1], idx))[:, :n])

    def swap_in(self, kv: KVCaches, request_id: str, pages: list[int]) -> KVCaches:
        k_host, v_host = self._host.pop(request_id)
        rows, n = self.rows(pages)
        if k_host.shape[1] != n:
            raise ValueError(f"request {request_id}: {k_host.shape[1]} rows on the host, swap-in into {n}")
        pad = [(0, 0), (0, len(rows) - n), (0, 0), (0, 0)]
        idx = jnp.asarray(rows)
        k = _scatter(kv[0], idx, jnp.asarray(np.pad(k_host, pad)))
        v = _scatter(kv[1], idx, jnp.asarray(np.pad(v_host, pad)))
        return k, v

    def discard(self, request_id: str) -> None:
        self._host.pop(request_id, None)

    def __contains__(self, request_id: object) -> bool:
        return request_id in self._host

    def __len__(self) -> int:
        return len(self._host)
