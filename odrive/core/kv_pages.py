"""KV pages per device: one formula for the simulator and the real engine (imports neither JAX nor the simulator).

A device fits ``floor((device_bytes × hbm_utilization − weight bytes on the device) / page bytes on the device)``
pages. :func:`kv_pages_fit` is that formula, and :class:`DecoderShape` the one home of the weight and K/V byte
counts it is fed: the real engine's ``odrive.runtime.memory.plan_kv_pages`` (one device, or ``tp`` through
``odrive.parallel.memory.per_device_kv_pages``; ``LlamaConfig.decoder_shape``) and the simulator's
``sim.model_spec.num_kv_pages`` (``ModelSpec.decoder``) all call it.

Under ``tp``-way tensor parallelism a device holds its share of the weights in the layout of
``odrive.parallel.specs`` (Megatron): the q/k/v/o projections and the gated MLP are split over the devices
(``ceil(heads / tp)`` heads and ``ceil(intermediate / tp)`` MLP columns each), the embedding table and the norms
are replicated, and an untied LM head is split over the vocabulary when ``vocab_size`` divides by ``tp``
(replicated otherwise). Every device holds every page id for its ``ceil(kv_heads / tp)`` KV heads.
:class:`DecoderShape` describes that layout; the real engine refuses a ``tp`` that does not divide the head and
MLP counts, the simulator rounds up (heads replicated).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from odrive.errors import ConfigError


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class WeightSplit:
    """Parameters one device holds, by role (counts, not bytes)."""

    matmuls: int  # the layers' split projections and MLP
    norms: int  # per-layer vectors: RMSNorm scales (replicated), q/k/v biases (split with their heads)
    embedding: int  # the embedding table (replicated; a step gathers rows of it)
    lm_head: int  # the LM head's share (0 when tied to the embedding)

    @property
    def total(self) -> int:
        return self.matmuls + self.norms + self.embedding + self.lm_head


@dataclass(frozen=True)
class DecoderShape:
    """The sizes that decide a Llama-style decoder's memory: GQA attention, gated (SwiGLU) MLP, RMSNorm, with Qwen2's
    q/k/v projection biases (``qkv_bias``) and Qwen3's per-head q/k RMSNorm (``qk_norm``) when present."""

    num_layers: int
    hidden_size: int
    num_q_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    qk_norm: bool = False

    @property
    def layer_matmul_params(self) -> int:
        """One layer's matmul weights: q, k, v, o projections and the three MLP matrices."""
        return self.layer_matmul_params_per_device(1)

    @property
    def num_parameters(self) -> int:
        """All weights: embeddings, layers (matmuls + two norms each), final norm, LM head."""
        return self.weight_split(1).total

    def vocab_parallel(self, tp: int) -> bool:
        """Whether the LM head is split over the vocabulary (untied and ``vocab_size`` divisible by ``tp``)."""
        return tp > 1 and not self.tie_word_embeddings and self.vocab_size % tp == 0

    def heads_per_device(self, tp: int) -> tuple[int, int]:
        """``(query heads, KV heads)`` one device computes under ``tp``-way tensor parallelism."""
        check_tp_size(tp)
        return _ceil_div(self.num_q_heads, tp), _ceil_div(self.num_kv_heads, tp)

    def layer_matmul_params_per_device(self, tp: int) -> int:
        """One layer's matmul weights on one device (column-parallel q/k/v/gate/up, row-parallel o/down)."""
        q_heads, kv_heads = self.heads_per_device(tp)
        q_out, kv_out = q_heads * self.head_dim, kv_heads * self.head_dim
        attention = self.hidden_size * (q_out + 2 * kv_out) + q_out * self.hidden_size
        return attention + 3 * self.hidden_size * _ceil_div(self.intermediate_size, tp)

    def weight_split(self, tp: int = 1) -> WeightSplit:
        """Parameters on one device, by role, in the real engine's layout (see the module docstring)."""
        embedding = self.vocab_size * self.hidden_size
        if self.tie_word_embeddings:
            lm_head = 0
        elif self.vocab_parallel(tp):
            lm_head = embedding // tp
        else:
            lm_head = embedding
        q_heads, kv_heads = self.heads_per_device(tp)
        per_layer = 2 * self.hidden_size + 2 * self.head_dim * self.qk_norm
        per_layer += (q_heads + 2 * kv_heads) * self.head_dim * self.qkv_bias
        norms = self.num_layers * per_layer + self.hidden_size
        return WeightSplit(self.num_layers * self.layer_matmul_params_per_device(tp), norms, embedding, lm_head)

    def weight_bytes_per_device(self, tp: int, dtype_bytes: int) -> int:
        """Bytes of weights one device holds."""
        return self.weight_split(tp).total * dtype_bytes

    def kv_bytes_per_token(self, dtype_bytes: int, tp: int = 1) -> int:
        """K and V of one token, all layers, on one device (its ``ceil(kv_heads / tp)`` heads)."""
        return 2 * self.num_layers * self.heads_per_device(tp)[1] * self.head_dim * dtype_bytes


def check_tp_size(tp: int) -> None:
    if not isinstance(tp, int) or tp < 1:
        raise ConfigError(f"tensor parallel size must be an int >= 1, got {tp!r}")


def check_hbm_utilization(hbm_utilization: float) -> None:
    """ConfigError unless ``0 < hbm_utilization <= 1`` (NaN included)."""
    if not 0.0 < hbm_utilization <= 1.0:  # also refuses NaN
        raise ConfigError(f"hbm_utilization must be in (0, 1], got {hbm_utilization}")


def kv_pages_fit(
    *, device_bytes: int | float, hbm_utilization: float, weight_bytes: int | float, page_bytes: int | float,
    min_pages: int = 1, what: str = "",
) -> int:  # fmt: skip
    """``floor((device_bytes × hbm_utilization − weight_bytes) / page_bytes)``: the KV pages one device fits.

    Raises ConfigError (naming every number) for a utilization outside ``(0, 1]``, a page of no bytes, or fewer
    than ``min_pages`` pages; ``what`` (e.g. ``"for 'llama-2-7b' per device (tp=2)"``) prefixes that message.
    """
    check_hbm_utilization(hbm_utilization)
    if not page_bytes > 0:
        raise ConfigError(f"a KV page must hold bytes, got page_bytes={page_bytes}")
    budget = device_bytes * hbm_utilization - weight_bytes
    pages = math.floor(budget / page_bytes)
    if pages < min_pages:
        prefix = f"no KV pages fit {what}".rstrip() if min_pages <= 1 else f"too few KV pages fit {what}".rstrip()
        raise ConfigError(
            f"{prefix}: device_bytes={device_bytes:.0f} x hbm_utilization={hbm_utilization} = "
            f"{device_bytes * hbm_utilization:.0f} bytes, weights need {weight_bytes:.0f} bytes, leaving room for "
            f"{max(pages, 0)} pages of {page_bytes:.0f} bytes; at least {min_pages} needed"
        )
    return pages


def per_device_kv_pages(
    shape: DecoderShape, *, device_bytes: int | float, hbm_utilization: float, page_size: int, dtype_bytes: int,
    tp: int = 1, kv_dtype_bytes: int | None = None, min_pages: int = 1, what: str = "",
) -> int:  # fmt: skip
    """:func:`kv_pages_fit` for ``shape`` sharded ``tp`` ways: per-device weights and per-device page bytes."""
    if page_size < 1:
        raise ConfigError(f"page_size must be >= 1, got {page_size}")
    return kv_pages_fit(
        device_bytes=device_bytes,
        hbm_utilization=hbm_utilization,
        weight_bytes=shape.weight_bytes_per_device(tp, dtype_bytes),
        page_bytes=page_size * shape.kv_bytes_per_token(kv_dtype_bytes or dtype_bytes, tp),
        min_pages=min_pages,
        what=what,
    )
