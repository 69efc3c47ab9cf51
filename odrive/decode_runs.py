"""Simulator fast-forward: a steady decode batch runs many steps in one engine call.

The scheduler declares a decode plan steady (``Scheduler.steady_steps``); the executor gives the run's step
times in closed form (``Executor.decode_run_durations``); this module bounds the run (free pages, the next
arrival) and grows the page tables exactly as stepping one at a time would have.
"""

from __future__ import annotations

import numpy as np

from odrive.allocators.base import PageAllocator
from odrive.errors import InvariantViolation
from odrive.executor import Executor, SeqChunk
from odrive.metrics import PageUsage

UNRECORDED = PageUsage(0, 0.0, 0, 0.0, 0.0, 0.0)  # stands in where no step row is kept


def decode_chunks(requests: list, allocator: PageAllocator) -> list[SeqChunk]:
    """Each request's next decode step (one token, sampled), with its current page table."""
    return [
        SeqChunk(r, r.num_computed_tokens, 1, allocator.page_table(r.request_id), True) for r in requests
    ]  # fmt: skip


def pages_for_run(allocator: PageAllocator, batch: list[SeqChunk], limit: int) -> int:
    """Most steps (at most ``limit``) every chunk of ``batch`` can decode with the pool's free pages; 0 when
    not even the first step fits."""
    ps = allocator.page_size
    # Token slots a request lacks for its first step (<= 0: its pages have room).
    lack = [c.kv_len - len(c.page_table) * ps for c in batch]
    free = allocator.num_free_pages

    def pages_needed(k: int) -> int:
        return sum(-(-(x + k - 1) // ps) for x in lack if x + k - 1 > 0)

    if pages_needed(limit) <= free:
        return limit
    if pages_needed(1) > free:
        return 0
    lo, hi = 1, limit  # pages_needed(lo) <= free < pages_needed(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if pages_needed(mid) <= free:
            lo = mid
        else:
            hi = mid
    return lo


def run_decodes(
    allocator: PageAllocator, executor: Executor, batch: list[SeqChunk], num_steps: int, horizon: float,
    record: bool,
) -> tuple[float, int, PageUsage]:  # fmt: skip
    """Run ``batch`` for up to ``num_steps`` decode steps, stopping before the first step that would start at
    or after ``horizon`` (the next arrival must be seen by a step starting then); grow the page tables.

    Returns (seconds, steps run, the pool's use over the run weighted by step time — ``UNRECORDED`` unless
    ``record``)."""
    durations = executor.decode_run_durations(batch, num_steps)
    ends = np.cumsum(durations)
    num_steps = max(1, int(np.searchsorted(ends - durations, horizon, side="left")))
    duration = float(ends[num_steps - 1])
    if not record:
        _grow(allocator, batch, num_steps)
        return duration, num_steps, UNRECORDED
    durations = durations[:num_steps]
    before = allocator.stats()
    ps = allocator.page_size
    kv = np.array([c.kv_len for c in batch], dtype=np.int64)
    held = np.array([len(c.page_table) for c in batch], dtype=np.int64)
    _grow(allocator, batch, num_steps)
    # Pool use during each step of the run, as stepping one at a time would have recorded it.
    step = np.arange(num_steps, dtype=np.int64)[:, None]
    pages = np.maximum(held, -(-(kv + step) // ps)).sum(axis=1) + (before.used_pages - held.sum())
    used = before.used_slots + len(batch) * step[:, 0]
    allocated = pages * ps
    frag = 1.0 - used / allocated
    w = durations / durations.sum() if durations.sum() > 0 else np.full(num_steps, 1.0 / num_steps)
    usage = PageUsage(before.num_pages, float(pages @ w), int(pages.max()), float(allocated @ w),
                      float(used @ w), float(frag @ w))  # fmt: skip
    return duration, num_steps, usage


def _grow(allocator: PageAllocator, batch: list[SeqChunk], num_steps: int) -> None:
    for c in batch:
        if not allocator.allocate(c.request.request_id, c.kv_len + num_steps - 1):
            raise InvariantViolation("fast-forward-pages", f"request {c.request.request_id} ran out of pages")
