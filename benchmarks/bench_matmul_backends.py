"""Which matmul path runs a decoder's projections fastest on this CPU: XLA:CPU's back ends and weight layouts,
numpy's BLAS and torch, side by side in one invocation.

The workload is the decode-step matmul chain of a decoder (default: SmolLM2-135M's shapes, 30 layers of q/k/v/o and
gate/up/down projections, float32): the layers' weights together are larger than the last-level cache, as in a real
step, so each layer's weights come from DRAM. Every XLA variant runs in its own process (XLA flags are read once, when
the CPU backend starts). Prints ms per chain (min / median over ``--repeats``) for batches 1, 8 and 32 and each
variant's ratio to XLA's default.

    python benchmarks/bench_matmul_backends.py            # ~40 s on a 2-core CPU
    python benchmarks/bench_matmul_backends.py --batch 8 --repeats 30
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import numpy as np
import pandas as pd

HIDDEN, INTERMEDIATE, KV, LAYERS = 576, 1536, 192, 30  # SmolLM2-135M: 9 query heads, 3 KV heads of 64

XLA_VARIANTS: dict[str, tuple[str, str]] = {  # name -> (XLA_FLAGS, weight layout)
    "xla default (K, N)": ("", "kn"),
    "xla default (N, K)": ("", "nk"),
    "xla oneDNN (K, N)": ("--xla_cpu_use_onednn=true", "kn"),
    "xla XNNPACK dots (K, N)": ("--xla_cpu_experimental_xnn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT", "kn"),
}


def layer_shapes() -> list[tuple[int, int]]:
    """(in, out) of one layer's projections, in the order a step runs them."""
    return [(HIDDEN, HIDDEN), (HIDDEN, KV), (HIDDEN, KV), (HIDDEN, HIDDEN), (HIDDEN, INTERMEDIATE),
            (HIDDEN, INTERMEDIATE), (INTERMEDIATE, HIDDEN)]  # fmt: skip


def weights(layout: str, seed: int = 0) -> list[list[np.ndarray]]:
    """Every layer's projection weights, ``(in, out)`` (``kn``) or ``(out, in)`` (``nk``)."""
    rng = np.random.default_rng(seed)
    return [
        [rng.standard_normal((k, n) if layout == "kn" else (n, k), dtype=np.float32) * 0.02 for k, n in layer_shapes()]
        for _ in range(LAYERS)
    ]


def chain(layer: Callable, x: object, params: list, sync: Callable) -> float:
    t0 = time.perf_counter()
    for p in params:
        x = layer(p, x)
    sync(x)
    return time.perf_counter() - t0


def time_chain(layer: Callable, make_x: Callable[[int], object], params: list, sync: Callable, batches: list[int],
               repeats: int) -> dict[int, list[float]]:  # fmt: skip
    out = {}
    for b in batches:
        x = make_x(b)
        chain(layer, x, params, sync)  # compile / warm up
        out[b] = [chain(layer, x, params, sync) for _ in range(repeats)]
    return out


def run_xla(layout: str, batches: list[int], repeats: int) -> dict[int, list[float]]:
    import jax
    import jax.numpy as jnp

    def mm(a: jax.Array, w: jax.Array) -> jax.Array:
        if layout == "kn":
            return a @ w
        return jax.lax.dot_general(a, w, (((1,), (1,)), ((), ())))

    @jax.jit
    def layer(p: list[jax.Array], x: jax.Array) -> jax.Array:
        wq, wk, wv, wo, wg, wu, wd = p
        attn = mm(x, wq) + jnp.pad(mm(x, wk) + mm(x, wv), ((0, 0), (0, HIDDEN - KV)))  # stands in for attention
        x = x + mm(attn, wo)
        return x + mm(jax.nn.silu(mm(x, wg)) * mm(x, wu), wd)

    params = [[jnp.asarray(w) for w in ws] for ws in weights(layout)]
    return time_chain(layer, lambda b: jnp.ones((b, HIDDEN), jnp.float32) * 0.1, params,
                      lambda x: x.block_until_ready(), batches, repeats)  # fmt: skip


def run_numpy(batches: list[int], repeats: int) -> dict[int, list[float]]:
    def layer(p: list[np.ndarray], x: np.ndarray) -> np.ndarray:
        wq, wk, wv, wo, wg, wu, wd = p
        attn = x @ wq
        attn[:, :KV] += x @ wk + x @ wv
        x = x + attn @ wo
        g = x @ wg
        return x + (g / (1 + np.exp(-g)) * (x @ wu)) @ wd

    return time_chain(layer, lambda b: np.full((b, HIDDEN), 0.1, np.float32), weights("kn"), lambda x: x, batches,
                      repeats)  # fmt: skip


def run_torch(batches: list[int], repeats: int) -> dict[int, list[float]] | None:
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(os.cpu_count() or 1)
    params = [[torch.from_numpy(w) for w in ws] for ws in weights("nk")]  # nn.Linear's (out, in)
    linear = torch.nn.functional.linear

    def layer(p: list, x: torch.Tensor) -> torch.Tensor:
        wq, wk, wv, wo, wg, wu, wd = p
        attn = linear(x, wq) + torch.nn.functional.pad(linear(x, wk) + linear(x, wv), (0, HIDDEN - KV))
        x = x + linear(attn, wo)
        return x + linear(torch.nn.functional.silu(linear(x, wg)) * linear(x, wu), wd)

    with torch.inference_mode():
        return time_chain(layer, lambda b: torch.full((b, HIDDEN), 0.1), params, lambda x: x, batches, repeats)


def child(variant: str, batches: list[int], repeats: int) -> None:
    """Run one variant in this process and print its times as JSON."""
    if variant == "numpy (BLAS)":
        times = run_numpy(batches, repeats)
    elif variant == "torch":
        times = run_torch(batches, repeats)
    else:
        times = run_xla(XLA_VARIANTS[variant][1], batches, repeats)
    print(json.dumps(None if times is None else {str(b): t for b, t in times.items()}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", default="1,8,32", help="comma-separated batch sizes")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    batches = [int(b) for b in args.batch.split(",") if b]
    if args.child is not None:
        child(args.child, batches, args.repeats)
        return
    rows = []
    for variant in [*XLA_VARIANTS, "numpy (BLAS)", "torch"]:
        env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": XLA_VARIANTS.get(variant, ("", ""))[0]}
        done = subprocess.run([sys.executable, __file__, "--child", variant, "--batch", args.batch, "--repeats",
                               str(args.repeats)], env=env, capture_output=True, text=True, check=True)  # fmt: skip
        times = json.loads(done.stdout.strip().splitlines()[-1])
        if times is None:
            print(f"{variant}: not installed, skipped")
            continue
        for b, ts in times.items():
            rows.append({"variant": variant, "batch": int(b), "min_ms": 1e3 * min(ts),
                         "median_ms": 1e3 * statistics.median(ts)})  # fmt: skip
    table = pd.DataFrame(rows)
    default = table[table["variant"] == "xla default (K, N)"].set_index("batch")["min_ms"]
    table["default_over_this"] = default.reindex(table["batch"]).to_numpy() / table["min_ms"]
    n_bytes = sum(k * n for k, n in layer_shapes()) * LAYERS * 4
    print(f"{LAYERS} layers' projections, {n_bytes / 2**20:.0f} MiB of float32 weights per chain; ms per chain "
          f"(min / median of {args.repeats}); default_over_this > 1: faster than XLA's default")
    print(table.pivot(index="variant", columns="batch", values=["min_ms", "median_ms", "default_over_this"])
          .round(2).to_string())  # fmt: skip


if __name__ == "__main__":
    main()
