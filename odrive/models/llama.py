"""Pure-functional JAX Llama decoder: dense reference forward and paged (ragged batch) forward.

Params pytree (all ``jnp`` arrays, Linear weights stored ``[in, out]``; one dict per layer, each weight its own
buffer, so a layer's matmuls read their weights in place)::

    {"embed": [V, H],
     "layers": [{"attn_norm": [H], "wq": [H, Hq*D], "wk": [H, Hkv*D], "wv": [H, Hkv*D], "wo": [Hq*D, H],
                 "mlp_norm": [H], "w_gate": [H, I], "w_up": [H, I], "w_down": [I, H],
                 "bq": [Hq*D], "bk": [Hkv*D], "bv": [Hkv*D],   # config.qkv_bias (Qwen2)
                 "q_norm": [D], "k_norm": [D]},                # config.qk_norm (Qwen3)
                ... one per layer],
     "final_norm": [H],
     "lm_head": [H, V]}          # absent when config.tie_word_embeddings (embed.T is used)

The dense reference stacks the layers and runs them as one ``lax.scan`` (compiled once, whatever the depth). The
paged forward runs one jitted layer step per layer (``paged_layer``; compiled once for all layers, the layer's
index picks its pages): a scan would slice every layer's weights out of a stacked array, which XLA:CPU copies —
as many bytes again as the matmuls read.
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
from odrive.models.kv_cache import allocate_kv_caches
from odrive.models.layers import batched_causal_attention, rms_norm, swiglu_mlp
from odrive.models.rope import apply_rope, rope_inv_freq

__all__ = [
    "Params",
    "allocate_kv_caches",
    "dense_greedy_generate",
    "forward_dense",
    "init_params",
    "layer_param_shapes",
    "make_dense_forward",
    "param_shapes",
    "stack_layers",
]

Params = dict[str, Any]
_NORMS = ("attn_norm", "mlp_norm", "final_norm", "q_norm", "k_norm")


def layer_param_shapes(config: LlamaConfig) -> dict[str, tuple[int, ...]]:
    """Shape of every parameter of one decoder layer."""
    c = config
    h, i = c.hidden_size, c.intermediate_size
    q, kv = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
    shapes = {
        "attn_norm": (h,),
        "wq": (h, q),
        "wk": (h, kv),
        "wv": (h, kv),
        "wo": (q, h),
        "mlp_norm": (h,),
        "w_gate": (h, i),
        "w_up": (h, i),
        "w_down": (i, h),
    }
    if c.qkv_bias:
        shapes.update(bq=(q,), bk=(kv,), bv=(kv,))
    if c.qk_norm:
        shapes.update(q_norm=(c.head_dim,), k_norm=(c.head_dim,))
    return shapes


def param_shapes(config: LlamaConfig) -> dict[str, Any]:
    """Expected shape of every parameter (same nesting as the params pytree: ``layers`` is a list)."""
    c = config
    shapes: dict[str, Any] = {
        "embed": (c.vocab_size, c.hidden_size),
        "layers": [layer_param_shapes(c) for _ in range(c.num_hidden_layers)],
        "final_norm": (c.hidden_size,),
    }
    if not c.tie_word_embeddings:
        shapes["lm_head"] = (c.hidden_size, c.vocab_size)
    return shapes


def stack_layers(layers: Sequence[Params]) -> Params:
    """The per-layer dicts as one dict of ``[num_layers, ...]`` arrays (for ``lax.scan``)."""
    return {name: jnp.stack([lp[name] for lp in layers]) for name in layers[0]}


def init_params(config: LlamaConfig, key: jax.Array, dtype: DTypeLike = jnp.float32) -> Params:
    """Random params: weights ~ N(0, 0.02); norm scales ~ 1 + N(0, 0.1) so norm wiring is observable."""
    return _init_params(config, key, resolve_dtype(dtype).name)


@functools.partial(jax.jit, static_argnums=(0, 2))
def _init_params(config: LlamaConfig, key: jax.Array, dtype: str) -> Params:
    # One flat normal draw sliced into leaves: compiles far faster than one RNG op per leaf. Each per-layer
    # weight is drawn for all layers at once ([L, ...]) and split, so values do not depend on the layout.
    n = config.num_hidden_layers
    shapes = param_shapes(config)
    flat = sorted(
        [(("layers", k), (n, *s)) for k, s in layer_param_shapes(config).items()]
        + [((k,), s) for k, s in shapes.items() if k != "layers"]
    )
    sizes = [math.prod(s) for _, s in flat]
    noise = jax.random.normal(key, (sum(sizes),), jnp.float32)
    params: Params = {"layers": [{} for _ in range(n)]}
    offset = 0
    for (path, shape), size in zip(flat, sizes, strict=True):
        leaf = noise[offset : offset + size].reshape(shape)
        offset += size
        value = (1.0 + 0.1 * leaf if path[-1] in _NORMS else 0.02 * leaf).astype(dtype)
        if path[0] == "layers":
            for layer, lp in enumerate(params["layers"]):
                lp[path[-1]] = value[layer]
        else:
            params[path[-1]] = value
    return params


# --------------------------------------------------------------------------- shared layer pieces
def project_qkv(lp: Params, x: jax.Array, positions: jax.Array, config: LlamaConfig) -> tuple[jax.Array, ...]:
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


def attention_output_and_mlp(
    lp: Params, x: jax.Array, attn: jax.Array, config: LlamaConfig, tp_axis: str | None = None
) -> jax.Array:
    """Output projection + residual, then pre-norm SwiGLU MLP + residual."""
    x = x + _all_reduce(attn.reshape(*x.shape[:-1], -1).astype(x.dtype) @ lp["wo"], tp_axis)
    h = rms_norm(x, lp["mlp_norm"], config.rms_norm_eps)
    return x + _all_reduce(swiglu_mlp(h, lp["w_gate"], lp["w_up"], lp["w_down"]), tp_axis)


def final_logits(params: Params, config: LlamaConfig, x: jax.Array) -> jax.Array:
    """Final norm and LM head; float32 logits ``[..., V]``."""
    x = rms_norm(x, params["final_norm"], config.rms_norm_eps)
    if config.tie_word_embeddings:
        return jnp.einsum("...h,vh->...v", x, params["embed"], preferred_element_type=jnp.float32)
    return jnp.einsum("...h,hv->...v", x, params["lm_head"], preferred_element_type=jnp.float32)


def softmax_scale(config: LlamaConfig) -> float:
    return config.head_dim**-0.5


# --------------------------------------------------------------------------- dense reference
def forward_dense(params: Params, config: LlamaConfig, token_ids: jax.Array) -> jax.Array:
    """No-cache causal forward: ``token_ids [B, T]`` int32 -> float32 logits ``[B, T, V]``."""
    b, t = token_ids.shape
    positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    x = jnp.take(params["embed"], token_ids, axis=0)

    def layer(x: jax.Array, lp: Params) -> tuple[jax.Array, None]:
        q, k, v = project_qkv(lp, x, positions, config)
        attn = batched_causal_attention(q, k, v, softmax_scale(config), config.sliding_window)
        return attention_output_and_mlp(lp, x, attn, config), None

    x, _ = jax.lax.scan(layer, x, stack_layers(params["layers"]))
    return final_logits(params, config, x)


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
