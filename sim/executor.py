"""The simulator's executor: step time from a latency model instead of running a model."""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
from mypy_extensions import mypyc_attr

from odrive.core.executor import ExecuteResult, Executor, SeqChunk, SwapOps
from odrive.schedulers.config import SchedulerConfig
from sim.host_swap import HostSwap, modeled_copy_seconds, modeled_swap_seconds, swap_rates
from sim.latency.base import LatencyModel
from sim.latency.batch_shape import BatchShape
from sim.latency.executor_setup import NO_SETUP, ExecutorSetup
from sim.model_spec import causal_attention_pairs

__all__ = ["HostSwap", "SimExecutor", "executor_for", "swap_rates"]

SHORT_CHAIN_STEPS = 256  # decode runs up to this long are timed step by step (see ``decode_chain_until``)


@mypyc_attr(allow_interpreted_subclasses=True)  # compiled by odrive.accel; users subclass it
class SimExecutor(Executor):
    """Models each step's duration; prefill chunks are padded to their ``prefill_lengths`` bucket, as
    the real engine pads them, so padding costs time here too. Produces no token ids.

    Swap preemption costs ``pages × page_size × kv_bytes_per_token / host_bandwidth`` seconds (as :class:`HostSwap`;
    not inherited from it: a compiled class takes no interpreted mixin, see ``odrive.accel``).
    Both rates default to the latency model's ``model.kv_bytes_per_token`` (÷ its ``tp``) and
    ``accelerator.host_bandwidth`` when it has them (the roofline does; :func:`swap_rates`). Copy-on-write of forked
    samples' pages reads and writes each page at ``accelerator.hbm_bandwidth`` (free without one).
    """

    supports_decode_runs: ClassVar[bool] = True

    def __init__(self, latency_model: LatencyModel, scheduler_config: SchedulerConfig, *,
                 kv_bytes_per_token: float | None = None, host_bandwidth: float | None = None) -> None:  # fmt: skip
        self.latency_model = latency_model
        self.scheduler_config = scheduler_config
        own_kv, own_bw = swap_rates(
            getattr(latency_model, "model", None),
            getattr(latency_model, "accelerator", None),
            getattr(latency_model, "tp", 1),
        )
        self.kv_bytes_per_token = kv_bytes_per_token or own_kv
        self.host_bandwidth = host_bandwidth or own_bw
        accelerator = getattr(latency_model, "accelerator", None)
        self.device_bandwidth: float | None = getattr(accelerator, "hbm_bandwidth", None)

    def swap_seconds(self, ops: SwapOps) -> float:
        return modeled_swap_seconds(self, ops)

    def swap(self, ops: SwapOps) -> float:
        return self.swap_seconds(ops)

    def copy_pages(self, copies: list[tuple[int, int]], page_size: int) -> float:
        return modeled_copy_seconds(self, copies, page_size)

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
            sampled += c.sample  # forks sampling from the same row: a few LM-head rows more, not modeled
        return BatchShape(prefill_tokens, decode_tokens, len(batch), pairs, kv_read, sampled, decode_kv)

    def execute(self, batch: list[SeqChunk]) -> ExecuteResult:
        return ExecuteResult(duration=self.latency_model.step_time(self.shape_of(batch)))

    def decode_run_durations(self, batch: list[SeqChunk], num_steps: int) -> np.ndarray:
        kv_read = sum(c.start + c.num_tokens for c in batch)
        return self.latency_model.decode_run_times(len(batch), kv_read, num_steps)

    def decode_chain_until(
        self, batch: list[SeqChunk], steps: list[int], horizon: float
    ) -> tuple[list[float], int] | None:
        # The typical run between two arrivals is a few dozen steps; timed in plain floats it costs a fraction of
        # the array path's fixed overhead, and sums in the same order (``np.cumsum``), so the times are identical.
        total = max(steps)
        if total > SHORT_CHAIN_STEPS and horizon == math.inf:
            return None
        by_end = sorted(zip(steps, (c.start + c.num_tokens for c in batch), strict=True))
        kv, left, gone = sum(k for _, k in by_end), len(by_end), 0
        step_time = self.latency_model.decode_step_timer()
        ends: list[float] = []
        end = 0.0
        # One step past the limit, so a chain whose horizon falls right after step SHORT_CHAIN_STEPS is decided here.
        for s in range(min(total, SHORT_CHAIN_STEPS + 1)):
            while by_end[gone][0] <= s:  # finished before step s
                kv -= by_end[gone][1]
                left -= 1
                gone += 1
            duration = step_time(left, kv + left * s)
            end += duration
            ends.append(end)
            if end - duration >= horizon:  # this step starts at or after the horizon: it will not run
                return ends, max(1, s)
        return (ends, total) if total <= SHORT_CHAIN_STEPS + 1 else None

    def decode_chain_durations(self, batch: list[SeqChunk], steps: list[int], horizon: float) -> np.ndarray:
        # Step s decodes the chunks with steps[i] > s, each at context kv_len + s: (sequences, KV read) per step.
        order = np.argsort(np.asarray(steps), kind="stable")
        ends = np.asarray(steps, dtype=np.int64)[order]
        kv0 = np.array([c.start + c.num_tokens for c in batch], dtype=np.int64)[order]
        s = np.arange(int(ends[-1]), dtype=np.int64)
        gone = np.searchsorted(ends, s, side="right")  # chunks finished before step s
        num_seqs = len(batch) - gone
        kv_left = np.concatenate(([0], np.cumsum(kv0[::-1])))[::-1]  # kv_left[j] = sum of kv0[j:]
        return self.latency_model.decode_step_times(num_seqs, kv_left[gone] + num_seqs * s)


def executor_for(latency_model: LatencyModel, scheduler_config: SchedulerConfig, setup: ExecutorSetup = NO_SETUP
                 ) -> Executor:  # fmt: skip
    """The executor that times steps with ``latency_model``: its own (:meth:`LatencyModel.make_executor`, e.g. the
    exact ``CalibratedSimExecutor``), else the stock :class:`SimExecutor`."""
    own = latency_model.make_executor(scheduler_config, setup)
    if own is not None:
        return own
    return SimExecutor(latency_model, scheduler_config, kv_bytes_per_token=setup.kv_bytes_per_token,
                       host_bandwidth=setup.host_bandwidth)  # fmt: skip
