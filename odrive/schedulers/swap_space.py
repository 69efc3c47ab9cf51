"""The host tier that swap preemption moves K/V pages to: capacity bookkeeping only (the executor holds
the bytes)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SwapSpace:
    """``capacity_pages`` host pages; ``held``: request_id → pages of that request's K/V on the host."""

    capacity_pages: int
    held: dict[str, int] = field(default_factory=dict)

    @property
    def used_pages(self) -> int:
        return sum(self.held.values())

    def can_hold(self, num_pages: int) -> bool:
        return self.used_pages + num_pages <= self.capacity_pages

    def put(self, request_id: str, num_pages: int) -> None:
        if request_id in self.held:
            raise ValueError(f"request {request_id} is already swapped out")
        self.held[request_id] = num_pages

    def take(self, request_id: str) -> int:
        """Forget ``request_id``'s host pages (swapped back in, or dropped); returns how many it held."""
        return self.held.pop(request_id, 0)

    def __contains__(self, request_id: object) -> bool:
        return request_id in self.held

    def __len__(self) -> int:
        return len(self.held)
