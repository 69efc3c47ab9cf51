"""The simulator's executor: step time from a latency model instead of running a model."""

from __future__ import annotations

import numpy as np

from odrive.executor import ExecuteResult, Executor, SeqChunk
from odrive.schedulers.config import SchedulerConfig
from sim.latency.base import LatencyModel
from sim.latency.batch_shape import BatchShape
from sim.model_spec import causal_attention_pairs


class SimExecutor(Executor):
    """Models each step's duration; prefill chunks are padded to their ``prefill_lengths`` bucket, as
    the real engine pads them, so padding costs time here too. Produces no token ids."""

    supports_decode_runs = True

    def __init__(self, latency_model: LatencyModel, scheduler_config: SchedulerConfig) -> None:
        self.latency_model = latency_model
        self.scheduler_config = scheduler_config

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
