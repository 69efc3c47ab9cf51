"""The simulator's executor: step time from a latency model instead of running a model."""

from __future__ import annotations

import numpy as np

from odrive.errors import ConfigError
from odrive.executor import ExecuteResult, Executor, SeqChunk, SwapOps
from odrive.schedulers.config import SchedulerConfig
from sim.latency.base import LatencyModel
from sim.latency.batch_shape import BatchShape
from sim.model_spec import causal_attention_pairs


class SimExecutor(Executor):
    """Models each step's duration; prefill chunks are padded to their ``prefill_lengths`` bucket, as
    the real engine pads them, so padding costs time here too. Produces no token ids.

    Swap preemption costs ``pages × page_size × kv_bytes_per_token / host_bandwidth`` seconds (out and in
    run one after the other, before the step's compute). Both rates default to the latency model's
    ``model.kv_bytes_per_token`` (÷ its ``tp``) and ``accelerator.host_bandwidth`` when it has them (the
    roofline does).
    """

    supports_decode_runs = True

    def __init__(self, latency_model: LatencyModel, scheduler_config: SchedulerConfig, *,
                 kv_bytes_per_token: float | None = None, host_bandwidth: float | None = None) -> None:  # fmt: skip
        self.latency_model = latency_model
        self.scheduler_config = scheduler_config
        model = getattr(latency_model, "model", None)
        accelerator = getattr(latency_model, "accelerator", None)
        per_device = getattr(model, "kv_bytes_per_token", 0) / getattr(latency_model, "tp", 1)  # TP: links in parallel
        self.kv_bytes_per_token = kv_bytes_per_token or per_device or None
        self.host_bandwidth = host_bandwidth or getattr(accelerator, "host_bandwidth", None)

    def shape_of(self, batch: list[SeqChunk]) -> BatchShape:
        prefill_tokens = decode_tokens = pairs = decode_kv = kv_read = sampled = 0
        bucket_for = self.scheduler_config.bucket_for
        for c in batch:
            kv_len = c.start + c.num_tokens
            if c.num_tokens == 1 and not c.request.is_prefill:
                decode_tokens += 1
                decode_kv += kv_len
                kv_read += kv_len
            else:
                padded = bucket_for(c.num_tokens)
                prefill_tokens += padded
                pairs += causal_attention_pairs(padded, c.start + padded)
                kv_read += c.start + padded
            sampled += c.sample
        return BatchShape(prefill_tokens, decode_tokens, len(batch), pairs, kv_read, sampled, decode_kv)

    def execute(self, batch: list[SeqChunk]) -> ExecuteResult:
        return ExecuteResult(duration=self.latency_model.step_time(self.shape_of(batch)))

    def decode_run_durations(self, batch: list[SeqChunk], num_steps: int) -> np.ndarray:
        kv_read = sum(c.start + c.num_tokens for c in batch)
        return self.latency_model.decode_run_times(len(batch), kv_read, num_steps)

    def swap(self, ops: SwapOps) -> float:
        if not self.kv_bytes_per_token or not self.host_bandwidth:
            raise ConfigError(
                f"{type(self.latency_model).__name__} exposes no model/accelerator: pass kv_bytes_per_token and "
                "host_bandwidth to SimExecutor to model swap preemption"
            )
        return ops.num_pages * ops.page_size * self.kv_bytes_per_token / self.host_bandwidth
