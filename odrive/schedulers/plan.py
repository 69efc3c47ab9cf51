"""The plain-data decision a scheduler returns each step."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class StepPlan:
    """``num_scheduled_tokens``: request_id → tokens to compute this step (a prefill chunk or 1 decode).

    ``preempted``: requests the scheduler preempted while planning (their pages are already freed).
    ``swap_out``: preempted requests whose K/V move to the host tier: request_id → the device pages (already
    freed in the allocator) holding its computed tokens, in order. ``swap_in``: requests resumed from the
    host tier: request_id → the device pages (already allocated) their K/V go back to. The executor copies
    every swap-out before any swap-in, both before the step's forward pass.
    """

    num_scheduled_tokens: dict[str, int] = field(default_factory=dict)
    preempted: list[str] = field(default_factory=list)
    swap_out: dict[str, list[int]] = field(default_factory=dict)
    swap_in: dict[str, list[int]] = field(default_factory=dict)

    @property
    def total_tokens(self) -> int:
        return sum(self.num_scheduled_tokens.values())

    @property
    def is_empty(self) -> bool:
        """No tokens scheduled (a plan may still carry swaps to apply)."""
        return not self.num_scheduled_tokens

    @property
    def has_swaps(self) -> bool:
        return bool(self.swap_out or self.swap_in)
