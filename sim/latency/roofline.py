"""Roofline latency: a step takes as long as its FLOPs or its HBM traffic, whichever is slower.

FLOPs = linear_flops_per_token x new tokens + attention (4 x layers x q_heads x head_dim per
query x key pair, prefill and decode) + LM head (2 x hidden x vocab per sampled token).
Bytes = one read of all weights + K/V reads of every scheduled sequence's context + K/V writes
of the new tokens. Prefill and decode share one step, hence one weight read.

Ignored: activation traffic, kernel efficiency (peaks are datasheet numbers), and compute/memory
overlap imperfections. With ``tp > 1`` FLOPs, weights and KV heads are split across devices and
two ring all-reduces per layer of the new tokens' hidden states are added (latency terms ignored).
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
from sim.model_spec import ModelSpec


@mypyc_attr(allow_interpreted_subclasses=True)
class RooflineLatencyModel(LatencyModel):
    """``max(FLOPs / peak_flops, bytes / hbm_bandwidth) + all-reduce time + step_overhead_s``."""

    def __init__(self, accelerator: Accelerator, model: ModelSpec, tp: int = 1) -> None:
        if tp < 1:
            raise ValueError(f"tp must be >= 1, got {tp}")
        self.accelerator = accelerator
        self.model = model
        self.tp = tp
        self.peak_flops = accelerator.peak_flops("fp32" if model.dtype_bytes >= 4 else "bf16")
        # Per-device costs, as floats so scalar and vectorized paths round identically.
        self._flops_per_token = model.linear_flops_per_token / tp
        self._flops_per_pair = model.attention_flops_per_pair / tp
        self._flops_per_sample = model.lm_head_flops_per_token / tp
        self._weight_bytes = model.weight_bytes / tp
        kv_heads_per_device = math.ceil(model.num_kv_heads / tp)
        self._kv_bytes_per_token = float(model.kv_bytes_per_token * kv_heads_per_device // model.num_kv_heads)
        ring_factor = 2 * (tp - 1) / tp
        allreduce_bytes_per_token = 2 * model.num_layers * model.hidden_size * model.dtype_bytes * ring_factor
        self._comm_s_per_token = allreduce_bytes_per_token / accelerator.interconnect_bandwidth

    def _terms(self, tokens: Any, pairs: Any, sampled: Any, kv_read: Any) -> tuple[Any, Any, Any]:
        """(compute seconds, memory seconds, communication seconds); works on ints or arrays."""
        flops = self._flops_per_token * tokens + self._flops_per_pair * pairs + self._flops_per_sample * sampled
        nbytes = self._weight_bytes + self._kv_bytes_per_token * (kv_read + tokens)
        return (flops / self.peak_flops, nbytes / self.accelerator.hbm_bandwidth, self._comm_s_per_token * tokens)

    def breakdown(self, shape: BatchShape) -> dict[str, float]:
        """The roofline terms of one step, for inspection: compute_s, memory_s, comm_s, overhead_s."""
        compute, memory, comm = self._terms(
            shape.num_tokens, shape.attention_pairs, shape.num_sampled, shape.kv_tokens_read
        )
        return {
            "compute_s": compute,
            "memory_s": memory,
            "comm_s": comm,
            "overhead_s": self.accelerator.step_overhead_s,
        }

    def step_time(self, shape: BatchShape) -> float:
        """Seconds for one step; an empty step (no tokens) takes 0."""
        if shape.num_tokens == 0:
            return 0.0
        compute, memory, comm = self._terms(
            shape.num_tokens, shape.attention_pairs, shape.num_sampled, shape.kv_tokens_read
        )
        return max(compute, memory) + comm + self.accelerator.step_overhead_s

    def decode_run_times(self, num_seqs: int, kv_tokens_read: int, num_steps: int) -> np.ndarray:
        check_decode_run(num_seqs, kv_tokens_read, num_steps)
        kv = kv_tokens_read + num_seqs * np.arange(num_steps, dtype=np.int64)
        return self.decode_step_times(num_seqs, kv)

    def decode_step_time(self, num_seqs: int, kv_tokens_read: int) -> float:
        return self.decode_step_timer()(num_seqs, kv_tokens_read)

    def decode_step_timer(self) -> Callable[[int, int], float]:
        # _terms inlined with its constants bound (called once per simulated decode step): the same operations
        # in the same order, so equal to decode_step_times bit for bit.
        per_token, per_pair, per_sample = self._flops_per_token, self._flops_per_pair, self._flops_per_sample
        peak, weights, kv_bytes = self.peak_flops, self._weight_bytes, self._kv_bytes_per_token
        bandwidth, overhead = self.accelerator.hbm_bandwidth, self.accelerator.step_overhead_s
        comm = self._comm_s_per_token

        def decode_step_time(num_seqs: int, kv_tokens_read: int) -> float:
            compute = (per_token * num_seqs + per_pair * kv_tokens_read + per_sample * num_seqs) / peak
            memory = (weights + kv_bytes * (kv_tokens_read + num_seqs)) / bandwidth
            return max(compute, memory) + comm * num_seqs + overhead

        return decode_step_time

    def decode_step_times(self, num_seqs: Any, kv_tokens_read: Any) -> np.ndarray:
        compute, memory, comm = self._terms(num_seqs, kv_tokens_read, num_seqs, kv_tokens_read)
        return np.maximum(compute, memory) + comm + self.accelerator.step_overhead_s


register_latency_model("roofline", RooflineLatencyModel)  # by call, not decorator: see odrive.accel
