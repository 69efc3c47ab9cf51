"""This machine's limits, measured in the benchmark's own run: memory read bandwidth and f32 matmul rate.

Bandwidth is read from buffers far larger than the last-level cache (a cache-sized buffer reads ~1.7x faster and
overstates what streaming a model's weights can reach). Each figure is the best of several repeats: the machine is
shared and noisy, and the best run is the one least disturbed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class MachineLimits:
    read_bytes_per_s: float
    matmul_flops_per_s: float

    def bound_s(self, bytes_read: float, flops: float) -> float:
        """The roofline time of a step: the larger of its reading time and its compute time."""
        return max(bytes_read / self.read_bytes_per_s, flops / self.matmul_flops_per_s)

    def describe(self) -> str:
        return (f"read bandwidth {self.read_bytes_per_s / 1e9:.1f} GB/s (1 GiB buffers), "
                f"f32 matmul {self.matmul_flops_per_s / 1e9:.0f} GFLOP/s (2048^3, XLA)")  # fmt: skip


def read_bandwidth(nbytes: int = 2**30, repeat: int = 5) -> float:
    """Bytes/s of reading a ``nbytes`` float32 array once (a jitted XLA sum over all cores)."""
    import jax
    import jax.numpy as jnp

    x = jnp.ones(nbytes // 4, jnp.float32)
    total = jax.jit(jnp.sum)
    total(x).block_until_ready()
    return nbytes / _best(lambda: total(x).block_until_ready(), repeat)


def matmul_rate(n: int = 2048, repeat: int = 5) -> float:
    """FLOP/s of an ``n x n x n`` float32 matmul through XLA."""
    import jax
    import jax.numpy as jnp

    a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n), np.float32))
    mm = jax.jit(jnp.matmul)
    mm(a, a).block_until_ready()
    return 2 * n**3 / _best(lambda: mm(a, a).block_until_ready(), repeat)


def measure() -> MachineLimits:
    return MachineLimits(read_bandwidth(), matmul_rate())


def _best(fn, repeat: int) -> float:  # noqa: ANN001
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)
