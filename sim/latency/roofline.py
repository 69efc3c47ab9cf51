"""Roofline latency: a step takes as long as its FLOPs or its HBM traffic, whichever is slower, at the rates real
kernels reach, plus its tensor-parallel all-reduces and a fixed per-step overhead.

Per device, with the weights laid out as the real engine shards them (:class:`odrive.core.kv_pages.DecoderShape`:
matmuls split, embeddings and norms replicated, an untied LM head split over the vocabulary when it divides):

- FLOPs = 2 × the device's matmul weights per new token + attention (4 × layers × its query heads × head_dim per
  query × key pair, prefill and decode) + the LM head (2 × hidden × its share of the vocabulary per sampled token);
  seconds = FLOPs / (peak × ``flops_efficiency``).
- Bytes = one read of the device's layer weights and norms (prefill and decode share one step, hence one read), of
  its LM head share when the step samples a token, the embedding rows of the new tokens (a gather, not a read of
  the table), and K/V: every scheduled sequence's context read plus the new tokens written;
  seconds = bytes / (HBM bandwidth × ``hbm_efficiency``).
- All-reduces (``tp > 1``): two per layer (after the attention output and the MLP down projections) of the new
  tokens' hidden states, each ``latency + 2 (tp - 1) / tp × bytes / bus_bandwidth`` (the accelerator's
  :class:`~sim.hardware.Link`), not overlapped with compute.

Efficiencies and the link default to the accelerator preset's (published measurements, see ``sim.hardware``) and
can be overridden per model; :meth:`RooflineLatencyModel.parameters` reports them into every run's summary.
``embeddings="streamed"`` and ``tp_layout="even"`` restore the older accounting (the whole embedding table read
every step; every weight, embeddings included, split evenly over ``tp``) for ablations such as
``benchmarks/bench_roofline_physics.py``. Ignored: activation traffic, compute/memory overlap imperfections, the
vocab-parallel LM head's logit gather.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from mypy_extensions import mypyc_attr

from sim.hardware import Accelerator
from sim.latency.base import LatencyModel, check_decode_run
from sim.latency.batch_shape import BatchShape
from sim.latency.registry import register_latency_model
from sim.model_spec import ModelSpec, causal_attention_pairs

EMBEDDINGS = ("gathered", "streamed")
TP_LAYOUTS = ("engine", "even")


def _fraction(name: str, value: float) -> float:
    value = float(value)
    if not 0 < value <= 1:
        raise ValueError(f"{name} must be in (0, 1], got {value}")
    return value


@mypyc_attr(allow_interpreted_subclasses=True)
class RooflineLatencyModel(LatencyModel):
    """``max(FLOPs / achieved FLOP/s, bytes / achieved bandwidth) + all-reduce time + step_overhead_s``."""

    def __init__(
        self,
        accelerator: Accelerator,
        model: ModelSpec,
        tp: int = 1,
        *,
        flops_efficiency: float | None = None,
        hbm_efficiency: float | None = None,
        allreduce_latency_s: float | None = None,
        allreduce_bus_bandwidth: float | None = None,
        embeddings: str = "gathered",
        tp_layout: str = "engine",
    ) -> None:
        if tp < 1:
            raise ValueError(f"tp must be >= 1, got {tp}")
        if embeddings not in EMBEDDINGS:
            raise ValueError(f"embeddings must be one of {EMBEDDINGS}, got {embeddings!r}")
        if tp_layout not in TP_LAYOUTS:
            raise ValueError(f"tp_layout must be one of {TP_LAYOUTS}, got {tp_layout!r}")
        self.accelerator = accelerator
        self.model = model
        self.tp = tp
        self.embeddings = embeddings
        self.tp_layout = tp_layout
        self.flops_efficiency = _fraction(
            "flops_efficiency", accelerator.flops_efficiency if flops_efficiency is None else flops_efficiency
        )
        self.hbm_efficiency = _fraction(
            "hbm_efficiency", accelerator.hbm_efficiency if hbm_efficiency is None else hbm_efficiency
        )
        link = accelerator.link()
        self.allreduce_latency_s = float(link.latency_s if allreduce_latency_s is None else allreduce_latency_s)
        self.allreduce_bus_bandwidth = float(
            link.bus_bandwidth if allreduce_bus_bandwidth is None else allreduce_bus_bandwidth
        )
        if self.allreduce_latency_s < 0 or not self.allreduce_bus_bandwidth > 0:
            raise ValueError("allreduce_latency_s must be >= 0 and allreduce_bus_bandwidth > 0")
        self.peak_flops = accelerator.peak_flops("fp32" if model.dtype_bytes >= 4 else "bf16")
        self._achieved_flops = self.peak_flops * self.flops_efficiency
        self._achieved_bandwidth = accelerator.hbm_bandwidth * self.hbm_efficiency
        b = model.dtype_bytes
        decoder = model.decoder
        if tp_layout == "engine":
            split = decoder.weight_split(tp)
            q_heads = decoder.heads_per_device(tp)[0]
            lm_flops = model.lm_head_flops_per_token / (tp if decoder.vocab_parallel(tp) else 1)
            self._flops_per_token = 2.0 * split.matmuls
            self._flops_per_pair = float(4 * model.num_layers * q_heads * model.head_dim)
            self._flops_per_sample = float(lm_flops)
            layers, embedding = float((split.matmuls + split.norms) * b), float(split.embedding * b)
            # A tied LM head is the embedding table: read whole by a sampling step.
            lm_head = float((split.lm_head or (split.embedding if decoder.tie_word_embeddings else 0)) * b)
        else:  # every weight split evenly, as the simulator once assumed
            self._flops_per_token = model.linear_flops_per_token / tp
            self._flops_per_pair = model.attention_flops_per_pair / tp
            self._flops_per_sample = model.lm_head_flops_per_token / tp
            table = model.vocab_size * model.hidden_size * b
            layers = (model.weight_bytes - table * (1 if model.tie_word_embeddings else 2)) / tp
            embedding = table / tp
            lm_head = 0.0 if model.tie_word_embeddings else embedding
        if embeddings == "gathered":
            self._static_bytes, self._lm_head_bytes = layers, lm_head
            self._embedding_bytes_per_token = float(model.hidden_size * b)
        else:  # the table (and the LM head) read whole every step
            self._static_bytes = model.weight_bytes / tp if tp_layout == "even" else layers + embedding + lm_head
            self._lm_head_bytes = 0.0
            self._embedding_bytes_per_token = 0.0
        kv_heads_per_device = math.ceil(model.num_kv_heads / tp)
        self._kv_bytes_per_token = float(model.kv_bytes_per_token * kv_heads_per_device // model.num_kv_heads)
        # Two all-reduces per layer of each new token's hidden state.
        if tp > 1:
            ring = 2 * (tp - 1) / tp
            per_layer = model.hidden_size * b * ring / self.allreduce_bus_bandwidth
            self._comm_s_per_token = 2 * model.num_layers * per_layer
            self._comm_s_per_step = 2 * model.num_layers * self.allreduce_latency_s
        else:
            self._comm_s_per_token = self._comm_s_per_step = 0.0

    def parameters(self) -> dict[str, float]:
        """The physics this model applies (reported in run summaries)."""
        return {
            "flops_efficiency": self.flops_efficiency,
            "hbm_efficiency": self.hbm_efficiency,
            "allreduce_latency_us": self.allreduce_latency_s * 1e6,
            "allreduce_bus_gbps": self.allreduce_bus_bandwidth / 1e9,
        }

    def _terms(self, tokens: Any, pairs: Any, sampled: Any, kv_read: Any) -> tuple[Any, Any, Any]:
        """(compute seconds, memory seconds, communication seconds) of a step with ``tokens > 0``; ints or arrays."""
        flops = self._flops_per_token * tokens + self._flops_per_pair * pairs + self._flops_per_sample * sampled
        nbytes = self._static_bytes + self._lm_head_bytes * (sampled > 0)
        nbytes = nbytes + self._kv_bytes_per_token * (kv_read + tokens) + self._embedding_bytes_per_token * tokens
        comm = self._comm_s_per_step + self._comm_s_per_token * tokens
        return flops / self._achieved_flops, nbytes / self._achieved_bandwidth, comm

    def breakdown(self, shape: BatchShape) -> dict[str, float]:
        """The roofline terms of one step, for inspection: compute_s, memory_s, comm_s, overhead_s."""
        if shape.num_tokens == 0:
            return {"compute_s": 0.0, "memory_s": 0.0, "comm_s": 0.0, "overhead_s": 0.0}
        compute, memory, comm = self._terms(
            shape.num_tokens, shape.attention_pairs, shape.num_sampled, shape.kv_tokens_read
        )
        return {
            "compute_s": float(compute),
            "memory_s": float(memory),
            "comm_s": float(comm),
            "overhead_s": self.accelerator.step_overhead_s,
        }

    def step_time(self, shape: BatchShape) -> float:
        """Seconds for one step; an empty step (no tokens) takes 0."""
        if shape.num_tokens == 0:
            return 0.0
        compute, memory, comm = self._terms(
            shape.num_tokens, shape.attention_pairs, shape.num_sampled, shape.kv_tokens_read
        )
        return float(max(compute, memory) + comm + self.accelerator.step_overhead_s)

    def min_prefill_seconds(self, num_tokens: int) -> float:
        # Every step costs at least its lone terms, and the chunks of a prompt add up to at least the whole prompt's
        # FLOPs, K/V traffic and all-reduces (each chunk re-reads the weights), so a lone unpadded step bounds it.
        n = max(1, num_tokens)
        return self.step_time(BatchShape(n, 0, 1, causal_attention_pairs(n, n), n, 1, 0))

    def decode_run_times(self, num_seqs: int, kv_tokens_read: int, num_steps: int) -> np.ndarray:
        check_decode_run(num_seqs, kv_tokens_read, num_steps)
        kv = kv_tokens_read + num_seqs * np.arange(num_steps, dtype=np.int64)
        return self.decode_step_times(num_seqs, kv)

    def decode_step_time(self, num_seqs: int, kv_tokens_read: int) -> float:
        return self.decode_step_timer()(num_seqs, kv_tokens_read)

    def decode_step_timer(self) -> Callable[[int, int], float]:
        # _terms inlined with its constants bound (called once per simulated decode step): the same operations
        # in the same order, so equal to decode_step_times bit for bit (a decode step always samples).
        per_token, per_pair, per_sample = self._flops_per_token, self._flops_per_pair, self._flops_per_sample
        flops_rate, bandwidth = self._achieved_flops, self._achieved_bandwidth
        weights = self._static_bytes + self._lm_head_bytes * True
        kv_bytes, embedding_bytes = self._kv_bytes_per_token, self._embedding_bytes_per_token
        comm_step, comm_token = self._comm_s_per_step, self._comm_s_per_token
        overhead = self.accelerator.step_overhead_s

        def decode_step_time(num_seqs: int, kv_tokens_read: int) -> float:
            compute = (per_token * num_seqs + per_pair * kv_tokens_read + per_sample * num_seqs) / flops_rate
            memory = (weights + kv_bytes * (kv_tokens_read + num_seqs) + embedding_bytes * num_seqs) / bandwidth
            return max(compute, memory) + (comm_step + comm_token * num_seqs) + overhead

        return decode_step_time

    def decode_step_times(self, num_seqs: Any, kv_tokens_read: Any) -> np.ndarray:
        compute, memory, comm = self._terms(num_seqs, kv_tokens_read, num_seqs, kv_tokens_read)
        return np.maximum(compute, memory) + comm + self.accelerator.step_overhead_s


register_latency_model("roofline", RooflineLatencyModel)  # by call, not decorator: see odrive.accel
