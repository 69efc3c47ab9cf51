"""Attention implementations by name, and the per-platform default."""

from __future__ import annotations

from typing import Protocol

import jax

from kernels.blocked import ragged_paged_attention_blocked
from kernels.paged_batch import PagedBatch
from kernels.pallas_attention import PALLAS_BACKENDS, pallas_supports, ragged_paged_attention_pallas
from kernels.reference import ragged_paged_attention_reference


class AttentionImpl(Protocol):
    """The ragged paged attention signature every implementation shares."""

    def __call__(
        self, q: jax.Array, k_pages: jax.Array, v_pages: jax.Array, batch: PagedBatch, *,
        sm_scale: float | None = None, sliding_window: int | None = None,
    ) -> jax.Array: ...  # fmt: skip


ATTENTION_IMPLS: tuple[str, ...] = ("reference", "blocked", "pallas")

# CPU, from benchmarks/bench_paged_attention.py on 2 cores: blocked ~2x faster than the reference on a
# 32-sequence decode batch and ~19x on a mixed prefill+decode batch, on par with dense attention over
# contiguous caches. TPU: the Pallas kernel targets the Triton lowering only, so TPU gets blocked too.
_DEFAULT_BY_BACKEND: dict[str, str] = {"cpu": "blocked", "gpu": "pallas"}


def get_attention_impl(name: str) -> AttentionImpl:
    """The implementation called ``name`` (one of ``ATTENTION_IMPLS``).

    ``"pallas"`` compiles only for GPU; elsewhere it raises ``NotImplementedError`` (for CPU testing call
    ``kernels.pallas_attention.ragged_paged_attention_pallas(..., interpret=True)`` directly).
    """
    if name == "reference":
        return ragged_paged_attention_reference
    if name == "blocked":
        return ragged_paged_attention_blocked
    if name == "pallas":
        backend = jax.default_backend()
        if backend not in PALLAS_BACKENDS:
            raise NotImplementedError(
                f"the 'pallas' attention kernel supports backends {PALLAS_BACKENDS}, not {backend!r}; "
                "use ragged_paged_attention_pallas(..., interpret=True) to run it in interpret mode"
            )
        return ragged_paged_attention_pallas
    raise ValueError(f"unknown attention implementation {name!r}; choose one of {', '.join(ATTENTION_IMPLS)}")


def default_attention_impl_name(backend: str | None = None) -> str:
    """The implementation ``ragged_paged_attention`` uses on ``backend`` (default: JAX's default backend)."""
    return _DEFAULT_BY_BACKEND.get(backend or jax.default_backend(), "blocked")


def ragged_paged_attention(
    q: jax.Array, k_pages: jax.Array, v_pages: jax.Array, batch: PagedBatch, *,
    sm_scale: float | None = None, sliding_window: int | None = None,
) -> jax.Array:  # fmt: skip
    """Ragged paged attention with the fastest implementation for the current platform.

    Shapes the Pallas kernel cannot tile (non-power-of-two GQA group, page size or head dim) use blocked.
    """
    name = default_attention_impl_name()
    if name == "pallas" and not pallas_supports(q, k_pages):
        name = "blocked"
    impl = get_attention_impl(name)
    return impl(q, k_pages, v_pages, batch, sm_scale=sm_scale, sliding_window=sliding_window)
