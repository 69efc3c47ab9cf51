"""One simulation's configuration, as plain data (hashable, so sweeps can cache by it)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from odrive.schedulers.config import SchedulerConfig


@dataclass(frozen=True)
class SimConfig:
    """Hardware, model, policies and limits of one simulated replica.

    ``num_pages`` overrides the page count that ``hbm_utilization`` would give (pages then come
    from the same formula the real engine uses: (HBM × utilization − weights) / bytes per page).
    """

    accelerator: str = "h100-80gb"
    model: str = "llama-2-7b"
    latency_model: str = "roofline"
    scheduler: str = "fcfs"
    allocator: str = "free-list"
    page_size: int = 16
    hbm_utilization: float = 0.9
    num_pages: int | None = None
    max_prefill_length: int = 16384
    prefill_lengths: tuple[int, ...] = ()
    max_concurrent_prefill: int = 8
    max_concurrent_decodes: int = 256
    max_num_batched_tokens: int | None = None
    chunk_size: int | None = None
    seed: int = 0
    check_invariants: bool = False
    record_steps: bool = True
    latency_kwargs: tuple[tuple[str, Any], ...] = field(default_factory=tuple)

    def scheduler_config(self) -> SchedulerConfig:
        return SchedulerConfig(
            max_prefill_length=self.max_prefill_length,
            prefill_lengths=self.prefill_lengths,
            max_concurrent_prefill=self.max_concurrent_prefill,
            max_concurrent_decodes=self.max_concurrent_decodes,
            max_num_batched_tokens=self.max_num_batched_tokens,
            chunk_size=self.chunk_size,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
