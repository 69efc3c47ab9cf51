"""What vSurge hands back: finished results and streamed deltas."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class RequestMetrics:
    """Timings of one request (seconds, wall clock)."""

    arrival_time: float
    first_token_time: float | None
    finish_time: float | None
    num_prompt_tokens: int
    num_generated_tokens: int
    num_preemptions: int

    @property
    def ttft(self) -> float | None:
        return None if self.first_token_time is None else self.first_token_time - self.arrival_time

    @property
    def e2e(self) -> float | None:
        return None if self.finish_time is None else self.finish_time - self.arrival_time

    @property
    def tokens_per_second(self) -> float:
        """Generated tokens over the request's time from first token to finish (decode rate)."""
        if self.first_token_time is None or self.finish_time is None or self.num_generated_tokens < 2:
            return 0.0
        span = self.finish_time - self.first_token_time
        return (self.num_generated_tokens - 1) / span if span > 0 else 0.0


@dataclass(frozen=True)
class GenerationResult:
    """A finished request: text, token ids, why it stopped, and its metrics."""

    request_id: str
    prompt: str | None
    text: str
    token_ids: list[int]
    finish_reason: str
    metrics: RequestMetrics


@dataclass(frozen=True)
class StreamDelta:
    """New output since the previous delta of the same request; ``finished`` on the last one."""

    request_id: str
    text: str
    token_ids: list[int] = field(default_factory=list)
    finished: bool = False
    finish_reason: str | None = None
    result: GenerationResult | None = None
    error: str | None = None  # why the request failed (finish_reason "error"; no result)
