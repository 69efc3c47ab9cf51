"""Pure-functional JAX Llama decoder: dense reference forward and paged (ragged batch) forward.

Params pytree (all ``jnp`` arrays, Linear weights stored ``[in, out]``; per-layer weights stacked on a
leading ``num_hidden_layers`` axis so the layer loop is one ``lax.scan``: the layer body is traced and
compiled once, so compile time does not grow with depth)::

    {"embed": [V, H],
     "layers": {"attn_norm": [L, H], "wq": [L, H, Hq*D], "wk": [L, H, Hkv*D], "wv": [L, H, Hkv*D],
                "wo": [L, Hq*D, H], "mlp_norm": [L, H], "w_gate": [L, H, I], "w_up": [L, H, I],
                "w_down": [L, I, H],
                "bq": [L, Hq*D], "bk": [L, Hkv*D], "bv": [L, Hkv*D],   # config.qkv_bias (Qwen2)
                "q_norm": [L, D], "k_norm": [L, D]},                  # config.qk_norm (Qwen3)
     "final_norm": [H],
     "lm_head": [H, V]}          # absent when config.tie_word_embeddings (embed.T is used)
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from odrive.models.config import LlamaConfig
from odrive.models.dtypes import DTypeLike, resolve_dtype
from odrive.models.kv_cache import KVCaches, allocate_kv_caches
from odrive.models.layers import dense_causal_attention, rms_norm, swiglu_mlp
from odrive.models.rope import apply_rope, rope_inv_freq

__all__ = [
    "Params",
    "allocate_kv_caches",
    "dense_greedy_generate",
    "forward_dense",
    "forward_paged",
    "init_params",
    "make_dense_forward",
    "make_paged_forward",
    "param_shapes",
]

Params = dict[str, Any]
_NORMS = ("attn_norm", "mlp_norm", "final_norm", "q_norm", "k_norm")


def param_shapes(config: LlamaConfig) -> dict[str, Any]:
    """Expected shape of every parameter (same nesting as the params pytree)."""
    c = config
    h, i, n = c.hidden_size, c.intermediate_size, c.num_hidden_layers
    q, kv = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
    shapes: dict[str, Any] = {
        "embed": (c.vocab_size, h),
        "layers": {
            "attn_norm": (n, h),
            "wq": (n, h, q),
            "wk": (n, h, kv),
            "wv": (n, h, kv),
            "wo": (n, q, h),
            "mlp_norm": (n, h),
            "w_gate": (n, h, i),
            "w_up": (n, h, i),
            "w_down": (n, i, h),
        },
        "final_norm": (h,),
    }
    if c.qkv_bias:
        shapes["layers"].update(bq=(n, q), bk=(n, kv), bv=(n, kv))
    if c.qk_norm:
        shapes["layers"].update(q_norm=(n, c.head_dim), k_norm=(n, c.head_dim))
    if not c.tie_word_embeddings:
        shapes["lm_head"] = (h, c.vocab_size)
    return shapes


def init_params(config: LlamaConfig, key: jax.Array, dtype: DTypeLike = jnp.float32) -> Params:
    """Random params: weights ~ N(0, 0.02); norm scales ~ 1 + N(0, 0.1) so norm wiring is observable."""
    return _init_params(config, key, resolve_dtype(dtype).name)


@functools.partial(jax.jit, static_argnums=(0, 2))
def _init_params(config: LlamaConfig, key: jax.Array, dtype: str) -> Params:
    # One flat normal draw sliced into leaves: compiles far faster than one RNG op per leaf.
    shapes = param_shapes(config)
    flat = sorted(
        [(("layers", k), s) for k, s in shapes["layers"].items()]
        + [((k,), s) for k, s in shapes.items() if k != "layers"]
    )
    sizes = [math.prod(s) for _, s in flat]
    noise = jax.random.normal(key, (sum(sizes),), jnp.float32)
    params: Params = {"layers": {}}
    offset = 0
    for (path, shape), size in zip(flat, sizes, strict=True):
        leaf = noise[offset : offset + size].reshape(shape)
        offset += size
        value = 1.0 + 0.1 * leaf if path[-1] in _NORMS else 0.02 * leaf
        target = params["layers"] if path[0] == "layers" else params
        target[path[-1]] = value.astype(dtype)
    return params


# --------------------------------------------------------------------------- shared layer pieces
def _qkv(lp: Params, x: jax.Array, positions: jax.Array, config: LlamaConfig) -> tuple[jax.Array, ...]:
    """Pre-norm, project and rotate: ``x [..., H]`` -> q ``[..., Hq, D]``, k/v ``[..., Hkv, D]``.

    Qwen2 adds a bias to each projection; Qwen3 RMS-normalises every head of q and k before RoPE.
    """
    h = rms_norm(x, lp["attn_norm"], config.rms_norm_eps)
    lead, d = x.shape[:-1], config.head_dim
    q, k, v = h @ lp["wq"], h @ lp["wk"], h @ lp["wv"]
    if config.qkv_bias:
        q, k, v = q + lp["bq"], k + lp["bk"], v + lp["bv"]
    q = q.reshape(*lead, config.num_attention_heads, d)
    k = k.reshape(*lead, config.num_key_value_heads, d)
    v = v.reshape(*lead, config.num_key_value_heads, d)
    if config.qk_norm:
        q, k = rms_norm(q, lp["q_norm"], config.rms_norm_eps), rms_norm(k, lp["k_norm"], config.rms_norm_eps)
    inv_freq = rope_inv_freq(config)
    return apply_rope(q, positions, inv_freq), apply_rope(k, positions, inv_freq), v


def _all_reduce(x: jax.Array, tp_axis: str | None) -> jax.Array:
    """Sum a row-parallel matmul's partial results over the tensor-parallel mesh axis (inside
    ``shard_map``, see ``odrive.parallel``); the identity when ``tp_axis`` is None (one device)."""
    return x if tp_axis is None else jax.lax.psum(x, tp_axis)


def _attn_out_and_mlp(
    lp: Params, x: jax.Array, attn: jax.Array, config: LlamaConfig, tp_axis: str | None = None
) -> jax.Array:
    """Output projection + residual, then pre-norm SwiGLU MLP + residual."""
    x = x + _all_reduce(attn.reshape(*x.shape[:-1], -1).astype(x.dtype) @ lp["wo"], tp_axis)
    h = rms_norm(x, lp["mlp_norm"], config.rms_norm_eps)
    return x + _all_reduce(swiglu_mlp(h, lp["w_gate"], lp["w_up"], lp["w_down"]), tp_axis)


def _logits(params: Params, config: LlamaConfig, x: jax.Array) -> jax.Array:
    """Final norm and LM head; float32 logits ``[..., V]``."""
    x = rms_norm(x, params["final_norm"], config.rms_norm_eps)
    if config.tie_word_embeddings:
        return jnp.einsum("...h,vh->...v", x, params["embed"], preferred_element_type=jnp.float32)
    return jnp.einsum("...h,hv->...v", x, params["lm_head"], preferred_element_type=jnp.float32)


def _sm_scale(config: LlamaConfig) -> float:
    return config.head_dim**-0.5


# --------------------------------------------------------------------------- dense reference
def forward_dense(params: Params, config: LlamaConfig, token_ids: jax.Array) -> jax.Array:
    """No-cache causal forward: ``token_ids [B, T]`` int32 -> float32 logits ``[B, T, V]``."""
    b, t = token_ids.shape
    positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    x = jnp.take(params["embed"], token_ids, axis=0)

    def layer(x: jax.Array, lp: Params) -> tuple[jax.Array, None]:
        q, k, v = _qkv(lp, x, positions, config)
        attn = dense_causal_attention(q, k, v, _sm_scale(config), config.sliding_window)
        return _attn_out_and_mlp(lp, x, attn, config), None

    x, _ = jax.lax.scan(layer, x, params["layers"])
    return _logits(params, config, x)


@functools.lru_cache(maxsize=32)
def make_dense_forward(config: LlamaConfig) -> Callable[[Params, jax.Array], jax.Array]:
    """Jitted ``(params, token_ids) -> logits`` for ``config`` (cached per config)."""

    def dense(params: Params, token_ids: jax.Array) -> jax.Array:
        return forward_dense(params, config, token_ids)

    return jax.jit(dense)


def dense_greedy_generate(
    params: Params,
    config: LlamaConfig,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    eos_token_ids: Sequence[int] = (),
) -> list[int]:
    """Greedy decoding oracle: re-runs ``forward_dense`` on the growing sequence.

    Returns only the generated tokens; stops after emitting a token in ``eos_token_ids`` (which is
    included, as in ``transformers.generate``). The sequence is right-padded to a fixed power-of-two
    bucket so a single compiled forward serves every step (causality makes the padding inert).
    """
    if not prompt_ids:
        raise ValueError("prompt_ids must be non-empty")
    n = len(prompt_ids)
    total = n + max_new_tokens
    bucket = max(16, 1 << (total - 1).bit_length())
    buf = np.zeros((1, bucket), np.int32)
    buf[0, :n] = prompt_ids
    forward = make_dense_forward(config)
    eos = set(eos_token_ids)
    out: list[int] = []
    for _ in range(max_new_tokens):
        logits = forward(params, jnp.asarray(buf))
        token = int(jnp.argmax(logits[0, n - 1]))
        out.append(token)
        if token in eos:
            break
        buf[0, n] = token
        n += 1
    return out


# --------------------------------------------------------------------------- paged forward
def forward_paged(
    params: Params,
    config: LlamaConfig,
    token_ids: jax.Array,
    positions: jax.Array,
    kv_caches: KVCaches,
    slot_mapping: jax.Array,
    kv_lens: jax.Array,
    page_indices: jax.Array,
    cu_q_lens: jax.Array,
    num_seqs: jax.Array,
    logits_indices: jax.Array,
    tp_axis: str | None = None,
) -> tuple[jax.Array, KVCaches]:
    """One step over a flat ragged batch (prefill chunks and decodes mixed).

    ``token_ids``/``positions``/``slot_mapping`` are ``[num_tokens]`` (padding rows: slot in null page 0);
    ``kv_lens``, ``page_indices``, ``cu_q_lens``, ``num_seqs`` follow ``kernels.ragged_paged_attention``
    with per-layer page ids (see ``odrive.models.kv_cache``). Returns float32 logits for the rows in
    ``logits_indices [max_seqs]`` and the updated caches.

    ``tp_axis`` names the tensor-parallel mesh axis when this runs per device inside ``shard_map`` on
    head/column shards of the params and kv-head shards of the caches (``odrive.parallel``): the
    row-parallel ``wo`` and ``w_down`` outputs are then summed over it. None (default): one device.
    """
    # Imported here so the dense path does not depend on the kernels package.
    from kernels import ragged_paged_attention, write_kv_pages

    k_pool, v_pool = kv_caches
    n_pages, page_size = k_pool.shape[1] // config.num_hidden_layers, k_pool.shape[2]
    x = jnp.take(params["embed"], token_ids, axis=0)

    def layer(carry: tuple[jax.Array, ...], xs: tuple[Params, jax.Array]) -> tuple[tuple[jax.Array, ...], None]:
        x, k_pool, v_pool = carry
        lp, index = xs
        q, k, v = _qkv(lp, x, positions, config)
        k_pool, v_pool = write_kv_pages(
            k_pool,
            v_pool,
            k.astype(k_pool.dtype),
            v.astype(v_pool.dtype),
            slot_mapping + index * n_pages * page_size,
        )
        attn = ragged_paged_attention(
            q,
            k_pool,
            v_pool,
            kv_lens,
            page_indices + index * n_pages,
            cu_q_lens,
            num_seqs,
            sm_scale=_sm_scale(config),
            sliding_window=config.sliding_window,
        )
        return (_attn_out_and_mlp(lp, x, attn, config, tp_axis), k_pool, v_pool), None

    layer_ids = jnp.arange(config.num_hidden_layers, dtype=jnp.int32)
    (x, k_pool, v_pool), _ = jax.lax.scan(layer, (x, k_pool, v_pool), (params["layers"], layer_ids))
    return _logits(params, config, x[logits_indices]), (k_pool, v_pool)


@functools.lru_cache(maxsize=32)
def make_paged_forward(config: LlamaConfig) -> Callable[..., tuple[jax.Array, KVCaches]]:
    """Jitted ``forward_paged`` with ``config`` bound and ``kv_caches`` (arg 3) donated.

    Call as ``fn(params, token_ids, positions, kv_caches, slot_mapping, kv_lens, page_indices,
    cu_q_lens, num_seqs, logits_indices)``; the passed caches are invalid afterwards.
    """

    def step(
        params,
        token_ids,
        positions,
        kv_caches,
        slot_mapping,
        kv_lens,
        page_indices,
        cu_q_lens,
        num_seqs,
        logits_indices,
    ):
        return forward_paged(
            params,
            config,
            token_ids,
            positions,
            kv_caches,
            slot_mapping,
            kv_lens,
            page_indices,
            cu_q_lens,
            num_seqs,
            logits_indices,
        )

    return jax.jit(step, donate_argnums=(3,))
