"""The latency-model interface: how long one engine step takes."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
from mypy_extensions import mypyc_attr

from sim.latency.batch_shape import BatchShape
from sim.latency.executor_setup import NO_SETUP, ExecutorSetup

if TYPE_CHECKING:
    from odrive.core.executor import Executor
    from odrive.schedulers.config import SchedulerConfig


def check_decode_run(num_seqs: int, kv_tokens_read: int, num_steps: int) -> None:
    """Validate :meth:`LatencyModel.decode_run_times` arguments."""
    if num_seqs < 1:
        raise ValueError(f"decode run needs num_seqs >= 1, got {num_seqs}")
    if kv_tokens_read < num_seqs:
        raise ValueError(f"decode run needs kv_tokens_read >= num_seqs ({num_seqs}), got {kv_tokens_read}")
    if num_steps < 0:
        raise ValueError(f"num_steps must be >= 0, got {num_steps}")


@mypyc_attr(allow_interpreted_subclasses=True)  # compiled by odrive.accel; users subclass it
class LatencyModel(ABC):
    """Maps a :class:`BatchShape` to seconds. Subclasses must be deterministic and side-effect free."""

    @abstractmethod
    def step_time(self, shape: BatchShape) -> float:
        """Seconds for one engine step of ``shape``."""

    def parameters(self) -> dict[str, float]:
        """Numbers that describe the model's physics (e.g. achieved-efficiency factors), reported in run summaries.
        Default: none."""
        return {}

    def min_prefill_seconds(self, num_tokens: int) -> float:
        """A lower bound on the time from the start of a ``num_tokens``-token prompt's first prefill step to the end
        of its last, however it is chunked and batched (a cluster bounds how far replicas may fast-forward with it).
        Default 0 (always a bound)."""
        return 0.0

    def decode_run_times(self, num_seqs: int, kv_tokens_read: int, num_steps: int) -> np.ndarray:
        """Durations of ``num_steps`` decode-only steps of ``num_seqs`` sequences.

        Step ``k`` reads ``kv_tokens_read + k * num_seqs`` context tokens (each sequence grows by one
        token per step). Must equal calling :meth:`step_time` step by step; subclasses override this
        with a vectorized closed form so the simulator can fast-forward long decode runs.
        """
        check_decode_run(num_seqs, kv_tokens_read, num_steps)
        return np.array(
            [self.step_time(BatchShape.decode_only(num_seqs, kv_tokens_read + k * num_seqs)) for k in range(num_steps)],
            dtype=np.float64,
        )

    def decode_step_time(self, num_seqs: int, kv_tokens_read: int) -> float:
        """Seconds of one decode-only step of ``num_seqs`` sequences reading ``kv_tokens_read`` context tokens;
        equal to the matching element of :meth:`decode_step_times` (the simulator times short decode runs
        step by step with it, where arrays cost more than they save)."""
        return self.step_time(BatchShape.decode_only(num_seqs, kv_tokens_read))

    def decode_step_timer(self) -> Callable[[int, int], float]:
        """:meth:`decode_step_time` as a plain function, for loops over many steps (models may bind their
        constants into it). Default: the bound method."""
        return self.decode_step_time

    def decode_step_times(self, num_seqs: np.ndarray, kv_tokens_read: np.ndarray) -> np.ndarray:
        """Durations of decode-only steps, step ``k`` of ``num_seqs[k]`` sequences reading ``kv_tokens_read[k]``
        context tokens (a decode run whose batch shrinks as requests finish). Default: one
        :meth:`decode_run_times` call per stretch of constant ``num_seqs``; vectorized models override it."""
        num_seqs, kv = np.asarray(num_seqs, dtype=np.int64), np.asarray(kv_tokens_read, dtype=np.int64)
        if len(num_seqs) == 0:
            return np.zeros(0)
        cuts = np.flatnonzero(np.diff(num_seqs)) + 1
        starts, stops = np.concatenate(([0], cuts)), np.concatenate((cuts, [len(num_seqs)]))
        return np.concatenate([
            self.decode_run_times(int(num_seqs[a]), int(kv[a]), int(b - a)) for a, b in zip(starts, stops, strict=True)
        ])  # fmt: skip

    def make_executor(self, scheduler_config: SchedulerConfig, setup: ExecutorSetup = NO_SETUP) -> Executor | None:
        """This model's own executor, or None for the stock ``SimExecutor`` (``sim.executor.executor_for`` asks
        the model, as ``sim.simulator.build_engine`` does). Default: None, the stock ``SimExecutor``, which only
        hands the model a ``BatchShape`` of sums and ignores ``setup``'s page size, max length and clock."""
        del scheduler_config, setup
        return None
