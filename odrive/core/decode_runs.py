"""Simulator fast-forward: a steady decode batch runs many steps in one engine call.

The scheduler declares a decode plan steady (``Scheduler.steady_steps``) and, optionally, steady past finishes
(``Scheduler.steady_after_finish``); the executor gives the steps' times in closed form
(``Executor.decode_chain_durations``); this module bounds the run (free pages, the next arrival) and grows the
page tables exactly as stepping one at a time would have.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from odrive.allocators.base import PageAllocator
from odrive.core.executor import Executor, SeqChunk
from odrive.core.metrics import PageUsage
from odrive.core.request import SIMULATED_TOKEN_ID
from odrive.errors import InvariantViolation

UNRECORDED = PageUsage(0, 0.0, 0, 0.0, 0.0, 0.0)  # stands in where no step row is kept
_MAX_CELLS = 1 << 21  # (requests x steps) beyond which a run stops at its first finish (bounded memory)


def fit_pages(allocator: PageAllocator, batch: list[SeqChunk], steps: list[int]) -> list[int]:
    """``steps`` (chunk ``i`` decodes in the first ``steps[i]`` steps, then finishes and frees its pages) cut
    to the steps the pool can serve: every step's growth must fit in the free pages plus those freed by
    earlier finishes. The first step never needs a page (the scheduler allocated it)."""
    ps, free = allocator.page_size, allocator.num_free_pages
    held = [len(c.page_table) for c in batch]
    kv0 = [c.kv_len for c in batch]
    # Fast path: all requests at their final size fit together, not even counting the pages finishes free.
    if sum(max(0, -(-(kv + k - 1) // ps) - h) for kv, k, h in zip(kv0, steps, held, strict=True)) <= free:
        return steps
    first = min(steps)
    if len(batch) * max(steps) > _MAX_CELLS:
        steps = [first] * len(batch)
    total = max(steps)
    s = np.arange(total, dtype=np.int64)
    grow = np.maximum(0, -(-(np.array(kv0)[:, None] + s) // ps) - np.array(held)[:, None])
    active = np.array(steps)[:, None] > s
    # Pages the pool lacks at step s: growth of the active requests minus the tables of finished ones.
    short = (grow * active).sum(axis=0) - (np.array(held)[:, None] * ~active).sum(axis=0) > free
    if not short.any():
        return steps
    cut = int(np.argmax(short))
    return [min(k, cut) for k in steps]


def steps_before(durations: np.ndarray, horizon: float) -> tuple[np.ndarray, int]:
    """(step end times, how many steps start before ``horizon`` — at least 1): the next arrival must be seen
    by the step that starts at or after it."""
    ends = np.cumsum(durations)
    return ends, max(1, int(np.searchsorted(ends - durations, horizon, side="left")))


def grow_tables(allocator: PageAllocator, chunk: SeqChunk, num_steps: int) -> None:
    """Give ``chunk``'s request the pages ``num_steps`` decode steps fill."""
    if not allocator.allocate(chunk.request.request_id, chunk.kv_len + num_steps - 1):
        raise InvariantViolation("fast-forward-pages", f"request {chunk.request.request_id} ran out of pages")


def commit_run(allocator: PageAllocator, batch: list[SeqChunk], ran: list[int]) -> None:
    """A prefix-caching allocator's view of a decode run in which chunk ``i`` ran ``ran[i]`` steps (its table grown,
    its token counts not yet advanced): each request whose prompt has ids gets ``ran[i]`` simulated output ids, and
    the pages the run fills are committed in the order stepping commits them (by step, then batch position), so
    which duplicate block is registered first, and so every later eviction and hit, equal stepping."""
    ps = allocator.page_size
    events: list[tuple[int, int, int]] = []
    for pos, (chunk, k) in enumerate(zip(batch, ran, strict=True)):
        req = chunk.request
        if req.prompt_token_ids is None or k < 1:
            continue
        req.output_token_ids.extend([SIMULATED_TOKEN_ID] * k)
        computed = req.num_computed_tokens  # after step j it is computed + j: a page fills where that is a multiple
        events += [(j, pos, computed + j) for j in range(ps - computed % ps, k + 1, ps)]
    for _, pos, computed in sorted(events):
        req = batch[pos].request
        before, req.num_computed_tokens = req.num_computed_tokens, computed
        allocator.commit(req)
        req.num_computed_tokens = before


def run_usage(allocator: PageAllocator, batch: list[SeqChunk], durations: np.ndarray) -> PageUsage:
    """The pool's use over a run of ``len(durations)`` steps of the whole ``batch`` (before its tables grew),
    weighted by step time: what stepping one at a time would have recorded."""
    before = allocator.stats()
    ps, num_steps = allocator.page_size, len(durations)
    kv = np.array([c.kv_len for c in batch], dtype=np.int64)
    held = np.array([len(c.page_table) for c in batch], dtype=np.int64)
    step = np.arange(num_steps, dtype=np.int64)[:, None]
    pages = np.maximum(held, -(-(kv + step) // ps)).sum(axis=1) + (before.used_pages - held.sum())
    used = before.used_slots + len(batch) * step[:, 0]
    allocated = pages * ps
    frag = 1.0 - used / allocated
    total = durations.sum()
    w = durations / total if total > 0 else np.full(num_steps, 1.0 / num_steps)
    return PageUsage(before.num_pages, float(pages @ w), int(pages.max()), float(allocated @ w),
                     float(used @ w), float(frag @ w))  # fmt: skip


def decode_chain(
    executor: Executor, batch: list[SeqChunk], steps: list[int], horizon: float
) -> tuple[Sequence[float] | np.ndarray, int]:
    """(step end times, steps run) of a decode run in which chunk ``i`` takes part in the first ``steps[i]``
    steps, stopped before the first step starting at or after ``horizon``."""
    short = executor.decode_chain_until(batch, steps, horizon)
    if short is not None:
        return short
    if min(steps) == max(steps):
        durations = executor.decode_run_durations(batch, steps[0])
    else:
        durations = executor.decode_chain_durations(batch, steps, horizon)
    return steps_before(durations, horizon)
