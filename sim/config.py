"""One simulation's configuration, as plain data (hashable, so sweeps can cache by it)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from odrive.core.assembly import EngineSpec
from odrive.errors import ConfigError
from odrive.schedulers.config import SchedulerConfig
from sim.model_spec import ModelSpec, get_model_spec

GiB = 2**30


@dataclass(frozen=True)
class SimConfig:
    """Hardware, model, policies and limits of one simulated replica.

    ``num_pages`` overrides the page count that ``hbm_utilization`` would give (pages then come
    from the same formula the real engine uses: (HBM × utilization − weights) / bytes per page).
    ``preemption_mode="swap"`` gives the scheduler a host tier of ``swap_space_pages`` pages (default: as
    many of the model's pages as fit in ``swap_space_gib``). ``scheduler_kwargs`` are the policy's options,
    e.g. ``(("predictor", "bucket-mean"), ("aging", 50.0))`` for ``sjf``. ``tensor_parallel_size``: the
    replica is one model sharded over that many accelerators (per-device page count and the latency model's
    ``tp``: per-device compute and traffic plus all-reduces over the interconnect).
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
    scheduler_kwargs: tuple[tuple[str, Any], ...] = field(default_factory=tuple)
    allocator_kwargs: tuple[tuple[str, Any], ...] = field(default_factory=tuple)
    preemption_mode: str = "recompute"
    swap_space_gib: float = 4.0
    swap_space_pages: int | None = None
    tensor_parallel_size: int = 1

    @property
    def tp(self) -> int:
        """The effective tensor-parallel size (``tensor_parallel_size``, or a ``tp`` in ``latency_kwargs``)."""
        legacy = dict(self.latency_kwargs).get("tp", 1)
        if self.tensor_parallel_size != 1 and legacy not in (1, self.tensor_parallel_size):
            raise ConfigError(
                f"tensor_parallel_size={self.tensor_parallel_size} disagrees with latency_kwargs tp={legacy}"
            )
        if self.tensor_parallel_size < 1:
            raise ConfigError(f"tensor_parallel_size must be >= 1, got {self.tensor_parallel_size}")
        return self.tensor_parallel_size if self.tensor_parallel_size != 1 else int(legacy)

    def scheduler_config(self) -> SchedulerConfig:
        return SchedulerConfig(
            max_prefill_length=self.max_prefill_length,
            prefill_lengths=self.prefill_lengths,
            max_concurrent_prefill=self.max_concurrent_prefill,
            max_concurrent_decodes=self.max_concurrent_decodes,
            max_num_batched_tokens=self.max_num_batched_tokens,
            chunk_size=self.chunk_size,
            preemption_mode=self.preemption_mode,
            swap_space_pages=self.host_swap_pages(),
            scheduler_kwargs=self.scheduler_kwargs,
            sliding_window=self.model_spec().sliding_window,
        )

    def engine_spec(self, num_pages: int, *, fast_forward: bool = True) -> EngineSpec:
        """The engine of this replica with a pool of ``num_pages`` (as :func:`sim.simulator.build_engine` sizes it):
        the one assembly the real engine uses too."""
        return EngineSpec(
            scheduler_config=self.scheduler_config(), num_pages=num_pages, page_size=self.page_size,
            scheduler=self.scheduler, allocator=self.allocator, allocator_kwargs=self.allocator_kwargs,
            check_invariants=self.check_invariants, record_steps=self.record_steps, fast_forward=fast_forward,
        )  # fmt: skip

    def model_spec(self) -> ModelSpec:
        """The spec of ``model`` (a preset, a checkpoint folder, a GGUF file or a packaged name)."""
        return get_model_spec(self.model)

    def host_swap_pages(self) -> int:
        """Pages of the swap tier: ``swap_space_pages``, else ``swap_space_gib`` of this model's pages in
        swap mode (0 in recompute mode)."""
        if self.swap_space_pages is not None:
            return self.swap_space_pages
        if self.preemption_mode != "swap":
            return 0
        spec = self.model_spec()
        # Host copies of every device's shard of a page (as the real engine counts its swap tier).
        per_device = spec.kv_bytes_per_page(self.page_size) * math.ceil(spec.num_kv_heads / self.tp) / spec.num_kv_heads
        return math.floor(self.swap_space_gib * GiB / (per_device * self.tp))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
