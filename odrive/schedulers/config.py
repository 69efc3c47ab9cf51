"""Scheduler limits shared by every policy."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from odrive.core.buckets import bucket_for, power_of_two_buckets
from odrive.errors import ConfigError

PREEMPTION_MODES = ("recompute", "swap")


def default_prefill_buckets(max_prefill_length: int, smallest: int = 16) -> tuple[int, ...]:
    """Powers of two from ``smallest`` up to ``max_prefill_length``, which is always the last bucket."""
    return power_of_two_buckets(max_prefill_length, smallest)


@dataclass(frozen=True)
class SchedulerConfig:
    """Limits every scheduler honours.

    - ``max_prefill_length``: the longest prompt accepted, and the largest prefill chunk per request
      per step. Longer prompts are rejected at admission with a reason (never truncated).
    - ``prefill_lengths``: padded prefill buckets; a prefill chunk of n tokens is padded to the smallest
      bucket >= n (bounded recompiles on the real engine; modeled padding cost in the simulator).
    - ``max_concurrent_prefill``: at most this many requests prefill in one step.
    - ``max_concurrent_decodes``: at most this many requests hold KV state and decode at once.
    - ``max_num_batched_tokens``: the per-step token budget (prefill chunk tokens + decode tokens).
    - ``preemption_mode``: ``"recompute"`` (free the victim's pages, re-prefill it later) or ``"swap"``
      (copy its K/V pages to a host tier of ``swap_space_pages`` pages and back; falls back to recompute
      when the host tier is full or the victim has nothing computed).
    - ``scheduler_kwargs``: policy-specific options (``(name, value)`` pairs) that ``make_scheduler`` passes
      to the policy's constructor, e.g. ``(("predictor", "bucket-mean"),)`` for ``sjf``.
    - ``sliding_window``: the model's attention window (Mistral), or None. With one, the engine releases pages
      wholly behind every running request's window after each step (``PageAllocator.release_before``).
    """

    max_prefill_length: int = 2048
    prefill_lengths: tuple[int, ...] = field(default_factory=tuple)
    max_concurrent_prefill: int = 1
    max_concurrent_decodes: int = 256
    max_num_batched_tokens: int | None = None
    chunk_size: int | None = None  # for chunked-prefill policies; defaults to max_prefill_length
    max_model_len: int | None = None  # cap on prompt + output tokens per request (None: only the pool limits)
    preemption_mode: str = "recompute"
    swap_space_pages: int = 0
    scheduler_kwargs: tuple[tuple[str, Any], ...] = ()
    sliding_window: int | None = None

    def __post_init__(self) -> None:
        if self.max_prefill_length < 1:
            raise ConfigError(f"max_prefill_length must be >= 1, got {self.max_prefill_length}")
        if not self.prefill_lengths:
            object.__setattr__(self, "prefill_lengths", default_prefill_buckets(self.max_prefill_length))
        buckets = tuple(sorted(int(b) for b in self.prefill_lengths))
        if buckets[0] < 1 or len(set(buckets)) != len(buckets):
            raise ConfigError(f"prefill_lengths must be distinct positive integers, got {self.prefill_lengths}")
        if buckets[-1] < self.max_prefill_length:
            raise ConfigError(
                f"the largest prefill bucket ({buckets[-1]}) is smaller than max_prefill_length "
                f"({self.max_prefill_length}): a prompt of max_prefill_length tokens would have no bucket"
            )
        object.__setattr__(self, "prefill_lengths", buckets)
        if self.max_concurrent_prefill < 1:
            raise ConfigError(f"max_concurrent_prefill must be >= 1, got {self.max_concurrent_prefill}")
        if self.max_concurrent_decodes < 1:
            raise ConfigError(f"max_concurrent_decodes must be >= 1, got {self.max_concurrent_decodes}")
        if self.max_num_batched_tokens is None:
            budget = max(self.max_prefill_length, self.max_concurrent_decodes)
            object.__setattr__(self, "max_num_batched_tokens", budget)
        if self.max_num_batched_tokens < 1:  # type: ignore[operator]
            raise ConfigError(f"max_num_batched_tokens must be >= 1, got {self.max_num_batched_tokens}")
        if self.chunk_size is None:
            object.__setattr__(self, "chunk_size", self.max_prefill_length)
        if self.max_model_len is not None and self.max_model_len < self.max_prefill_length:
            raise ConfigError(
                f"max_model_len ({self.max_model_len}) is smaller than max_prefill_length ({self.max_prefill_length})"
            )
        if self.chunk_size < 1:  # type: ignore[operator]
            raise ConfigError(f"chunk_size must be >= 1, got {self.chunk_size}")
        if self.preemption_mode not in PREEMPTION_MODES:
            raise ConfigError(f"preemption_mode must be one of {PREEMPTION_MODES}, got {self.preemption_mode!r}")
        if self.swap_space_pages < 0:
            raise ConfigError(f"swap_space_pages must be >= 0, got {self.swap_space_pages}")
        if self.preemption_mode == "swap" and self.swap_space_pages == 0:
            raise ConfigError("preemption_mode='swap' needs a host tier: set swap_space_pages >= 1")
        object.__setattr__(self, "scheduler_kwargs", tuple((str(k), v) for k, v in dict(self.scheduler_kwargs).items()))
        if self.sliding_window is not None and self.sliding_window < 1:
            raise ConfigError(f"sliding_window must be >= 1 or None, got {self.sliding_window}")

    @property
    def token_budget(self) -> int:
        return int(self.max_num_batched_tokens)  # type: ignore[arg-type]

    @property
    def chunk_limit(self) -> int:
        """The largest prefill chunk a chunked-prefill policy schedules: ``min(chunk_size, max_prefill_length)``."""
        return min(int(self.chunk_size), self.max_prefill_length)  # type: ignore[arg-type]

    def bucket_for(self, num_tokens: int) -> int:
        """The padded length of a prefill chunk of ``num_tokens`` (:func:`odrive.core.buckets.bucket_for`: past the
        last bucket, ``max_prefill_length`` or more, a ``BucketOverflow``)."""
        return bucket_for(num_tokens, self.prefill_lengths, "prefill chunk of tokens")
