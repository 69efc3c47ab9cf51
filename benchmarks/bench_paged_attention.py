"""Time ragged paged attention implementations against dense attention over the same contexts.

Dense = contiguous, padded per-sequence caches: one batched call for the decode sequences plus one call per
prefill chunk (what you would run without paging). Reported: median wall time after warm-up, and each
paged implementation's ratio to dense.

    python benchmarks/bench_paged_attention.py [--quick] [--sweep]
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from kernels import get_attention_impl, ragged_paged_attention_blocked
from kernels.pallas_attention import PALLAS_BACKENDS
from kernels.softmax import masked_softmax

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from paged_batches import RandomPagedBatch, make_paged_batch  # noqa: E402 - the tests' random paged batches


@dataclass(frozen=True)
class Shape:
    num_q_heads: int = 16
    kv_heads: int = 4
    head_dim: int = 64
    page_size: int = 16
    max_model_len: int = 2048


@jax.jit
def dense_padded_attention(q: jax.Array, k: jax.Array, v: jax.Array, kv_lens: jax.Array) -> jax.Array:
    """q ``[B, Q, Hq, D]``: the last Q positions of each context; k/v ``[B, Hkv, L, D]``; lengths ``[B]``."""
    batch, q_len, num_q_heads, head_dim = q.shape
    kv_heads = k.shape[1]
    qg = q.reshape(batch, q_len, kv_heads, num_q_heads // kv_heads, head_dim) * head_dim**-0.5
    scores = jnp.einsum("bqhgd,bhkd->bhgqk", qg, k)
    position = kv_lens[:, None] - q_len + jnp.arange(q_len)[None, :]  # [B, Q]
    visible = jnp.arange(k.shape[2])[None, None, :] <= position[:, :, None]  # [B, Q, L]
    probs = masked_softmax(jnp.where(visible[:, None, None], scores, -jnp.inf))
    out = jnp.einsum("bhgqk,bhkd->bqhgd", probs, v)
    return out.reshape(batch, q_len, num_q_heads, head_dim)


def dense_groups(batch: RandomPagedBatch) -> list[tuple[jax.Array, ...]]:
    """Dense inputs: all decode sequences in one padded batch, each prefill chunk on its own.

    Caches are contiguous and head-major (``[B, Hkv, L, D]``), the friendliest layout for XLA on CPU.
    """
    cu = np.asarray(batch.cu_q_lens)
    q_lens = [int(cu[s + 1] - cu[s]) for s in range(len(batch.contexts))]

    def group(seqs: list[int], q_len: int) -> tuple[jax.Array, ...]:
        width = max(batch.contexts[s][1].shape[0] for s in seqs)
        lens = np.array([batch.contexts[s][1].shape[0] for s in seqs], np.int32)
        pad = [((0, width - n), (0, 0), (0, 0)) for n in lens]
        q = np.stack([batch.contexts[s][0][n - q_len :] for s, n in zip(seqs, lens, strict=True)])
        k = np.stack([np.pad(batch.contexts[s][1], p) for s, p in zip(seqs, pad, strict=True)])
        v = np.stack([np.pad(batch.contexts[s][2], p) for s, p in zip(seqs, pad, strict=True)])
        k, v = np.swapaxes(k, 1, 2), np.swapaxes(v, 1, 2)  # head-major, like the pages
        return jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), jnp.asarray(lens)

    decodes = [s for s, n in enumerate(q_lens) if n == 1]
    groups = [group(decodes, 1)] if decodes else []
    return groups + [group([s], n) for s, n in enumerate(q_lens) if n > 1]


def run_dense(groups: list[tuple[jax.Array, ...]]) -> list[jax.Array]:
    return [dense_padded_attention(*group) for group in groups]


def median_seconds(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median wall time of each function after two warm-up calls; runs are interleaved round-robin so that
    background load on the machine hits every contender alike."""
    for fn in fns.values():
        jax.block_until_ready(fn())  # compile
        jax.block_until_ready(fn())
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(samples) for name, samples in times.items()}


def build(
    rng: np.random.Generator, shape: Shape, prior: list[int], new: list[int], num_tokens: int
) -> RandomPagedBatch:
    return make_paged_batch(
        rng,
        prior_lens=prior,
        q_lens=new,
        page_size=shape.page_size,
        num_q_heads=shape.num_q_heads,
        kv_heads=shape.kv_heads,
        head_dim=shape.head_dim,
        num_tokens=num_tokens,
        max_seqs=len(new),
        pages_per_seq=shape.max_model_len // shape.page_size,
        spare_pages=0,
    )


def scenarios(rng: np.random.Generator, quick: bool) -> dict[str, tuple[Shape, RandomPagedBatch]]:
    """A pure decode batch, and a mixed batch: a chunk after cached context, a fresh prompt, decodes."""
    shape = Shape(max_model_len=1024) if quick else Shape()
    num_decodes, lo, hi = (8, 64, 512) if quick else (32, 256, 1536)
    decode_ctx = rng.integers(lo, hi, num_decodes).tolist()
    chunk, chunk_prior, fresh = (64, 128, 32) if quick else (256, 512, 128)
    mixed_ctx = decode_ctx[: num_decodes // 2]
    decode = build(rng, shape, [n - 1 for n in decode_ctx], [1] * num_decodes, num_decodes)
    prior = [chunk_prior, 0] + [n - 1 for n in mixed_ctx]
    new = [chunk, fresh] + [1] * len(mixed_ctx)
    mixed = build(rng, shape, prior, new, -(-sum(new) // 64) * 64)  # rows padded to a multiple of 64
    return {
        f"decode x{num_decodes}": (shape, decode),
        f"mixed {chunk}+{fresh}+{len(mixed_ctx)}d": (shape, mixed),
    }


def paged_impls(sweep: bool) -> dict[str, Callable[..., jax.Array]]:
    impls = {"reference": get_attention_impl("reference"), "blocked": get_attention_impl("blocked")}
    if jax.default_backend() in PALLAS_BACKENDS:
        impls["pallas"] = get_attention_impl("pallas")
    if sweep:
        for kv_tokens in (64, 128, 256, 512):
            for q_block in (16, 32, 64, 128):
                fn = functools.partial(
                    ragged_paged_attention_blocked, kv_block_tokens=kv_tokens, q_block=q_block
                )
                impls[f"blocked kv{kv_tokens} q{q_block}"] = fn
    return impls


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small shapes, few repeats (a few seconds)")
    parser.add_argument("--sweep", action="store_true", help="also time blocked with other block sizes")
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args()
    repeats = args.repeats or (3 if args.quick else 7)
    rng = np.random.default_rng(0)
    print(f"backend={jax.default_backend()} devices={jax.devices()} repeats={repeats}")
    if jax.default_backend() not in PALLAS_BACKENDS:
        print(f"pallas: skipped (compiles only on {PALLAS_BACKENDS}; interpret mode is not a timing)")
    for name, (shape, batch) in scenarios(rng, args.quick).items():
        fns = {"dense": functools.partial(run_dense, dense_groups(batch))}
        fns |= {impl: functools.partial(fn, *batch.args()) for impl, fn in paged_impls(args.sweep).items()}
        seconds = median_seconds(fns, repeats)
        ctx = [c[1].shape[0] for c in batch.contexts]
        print(f"\n== {name}: {shape}, rows={batch.q.shape[0]}, context tokens={sum(ctx)} (max {max(ctx)})")
        for impl, t in seconds.items():
            ratio = "" if impl == "dense" else f"   {impl} / dense = {t / seconds['dense']:5.2f}x"
            print(f"  {impl:<24} {t * 1e3:9.2f} ms{ratio}")


if __name__ == "__main__":
    main()
