"""The plain-data decision a scheduler returns each step."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class StepPlan:
    """``num_scheduled_tokens``: request_id → tokens to compute this step (a prefill chunk or 1 decode).

    ``preempted``: requests the scheduler preempted while planning (their pages are already freed).
    """

    num_scheduled_tokens: dict[str, int] = field(default_factory=dict)
    preempted: list[str] = field(default_factory=list)

    @property
    def total_tokens(self) -> int:
        return sum(self.num_scheduled_tokens.values())

    @property
    def is_empty(self) -> bool:
        return not self.num_scheduled_tokens
