"""Token sampling on device: true greedy at temperature 0, else temperature / top-k / top-p."""

from __future__ import annotations

import functools
import zlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from odrive.models.config import LlamaConfig
from odrive.models.llama import final_logits


def _sample_row(logits: jax.Array, temperature: jax.Array, top_k: jax.Array, top_p: jax.Array,
                key: jax.Array) -> jax.Array:
    vocab = logits.shape[-1]
    scaled = logits / jnp.maximum(temperature, 1e-6)
    order = jnp.argsort(-scaled)
    sorted_logits = scaled[order]
    rank = jnp.arange(vocab)
    keep = jnp.where(top_k > 0, rank < top_k, True)
    probs = jax.nn.softmax(jnp.where(keep, sorted_logits, -jnp.inf))
    # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
    before = jnp.cumsum(probs) - probs
    keep = keep & (before < top_p)
    choice = jax.random.categorical(key, jnp.where(keep, sorted_logits, -jnp.inf))
    return order[choice]


@jax.jit
def sample_tokens(logits: jax.Array, temperature: jax.Array, top_k: jax.Array, top_p: jax.Array,
                  seeds: jax.Array, steps: jax.Array) -> jax.Array:
    """``logits [S, V]`` float32; per row ``temperature``, ``top_k`` (0 = off), ``top_p``, and the PRNG
    stream ``(seeds[s], steps[s])`` (request seed, output index) so a seeded request samples the same
    tokens whatever else shares its batch. Rows with temperature 0 take the argmax exactly.
    """
    greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)

    def with_sampling(_: None) -> jax.Array:
        keys = jax.vmap(lambda s, t: jax.random.fold_in(jax.random.PRNGKey(s), t))(seeds, steps)
        sampled = jax.vmap(_sample_row)(logits, temperature, top_k, top_p, keys).astype(jnp.int32)
        return jnp.where(temperature == 0.0, greedy, sampled)

    return jax.lax.cond(jnp.all(temperature == 0.0), lambda _: greedy, with_sampling, None)


def stream_seed(engine_seed: int, request_seed: int | None, request_id: str) -> int:
    """The 31-bit PRNG seed of a request: its own seed if given, else the engine seed mixed with its id."""
    if request_seed is not None:
        return request_seed & 0x7FFFFFFF
    return zlib.crc32(request_id.encode(), engine_seed & 0xFFFFFFFF) & 0x7FFFFFFF


@functools.lru_cache(maxsize=32)
def make_greedy_head(config: LlamaConfig) -> Callable[..., jax.Array]:
    """Jitted ``(head_params, hidden, logits_indices) -> argmax token ids``: final norm, LM head and argmax in one
    call, so only the token ids leave the device."""

    def greedy(head_params: dict[str, Any], hidden: jax.Array, logits_indices: jax.Array) -> jax.Array:
        return jnp.argmax(final_logits(head_params, config, hidden[logits_indices]), axis=-1).astype(jnp.int32)

    return jax.jit(greedy)


@functools.lru_cache(maxsize=32)
def make_sampling_head(config: LlamaConfig) -> Callable[..., jax.Array]:
    """Jitted ``(head_params, hidden, logits_indices, temperature, top_k, top_p, seeds, steps) -> token ids``: the LM
    head and :func:`sample_tokens` in one call."""

    def sample(head_params: dict[str, Any], hidden: jax.Array, logits_indices: jax.Array, *rows: jax.Array
               ) -> jax.Array:  # fmt: skip
        return sample_tokens(final_logits(head_params, config, hidden[logits_indices]), *rows)

    return jax.jit(sample)
