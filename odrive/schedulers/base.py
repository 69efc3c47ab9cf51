"""The Scheduler interface: each step, pick which requests compute how many tokens."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque

from odrive.allocators.base import PageAllocator
from odrive.request import Request, RequestStatus
from odrive.schedulers.config import SchedulerConfig
from odrive.schedulers.plan import StepPlan


class Scheduler(ABC):
    """Owns the waiting queue and the running set; ``schedule`` returns a StepPlan.

    A policy implements ``schedule``. It must allocate pages (via ``self.allocator``) for every token
    it schedules, keep ``running`` within ``max_concurrent_decodes``, and may preempt with
    ``preempt``. The engine (shared by simulator and real engine) executes the plan, appends tokens,
    finishes requests and frees their pages — policies never duplicate that logic.
    """

    def __init__(self, config: SchedulerConfig, allocator: PageAllocator) -> None:
        self.config = config
        self.allocator = allocator
        self.waiting: deque[Request] = deque()
        self.running: dict[str, Request] = {}  # insertion order = admission order

    # --- policy ---------------------------------------------------------------------------------
    @abstractmethod
    def schedule(self) -> StepPlan: ...

    def steady_steps(self, plan: StepPlan) -> int:
        """How many identical decode-only steps ``plan`` would repeat, absent arrivals and finishes.

        The simulator fast-forwards that many steps at once. The safe default is 1; a policy returns
        more only when its decision provably cannot change until a request arrives or finishes.
        """
        return 1

    # --- queue management ---------------------------------------------------------------------------
    def add_request(self, request: Request) -> None:
        request.status = RequestStatus.WAITING
        self.waiting.append(request)

    def admit(self, request: Request) -> None:
        """Move the head-of-queue ``request`` (already given pages) into the running set."""
        self.waiting.remove(request) if self.waiting[0] is not request else self.waiting.popleft()
        request.status = RequestStatus.RUNNING
        self.running[request.request_id] = request

    def allocate_for_admission(self, request: Request, max_tokens: int) -> int:
        """Give a waiting ``request`` pages for its next prefill chunk, reusing cached prefix pages.

        Returns the chunk length (tokens to compute this step, at most ``max_tokens``), or 0 if the
        pages are not available — in which case nothing changed. A prefix-cache hit advances
        ``num_computed_tokens`` past the cached tokens (always leaving at least one token to compute,
        so the step yields logits for the next token).
        """
        alloc = self.allocator
        if request.num_computed_tokens == 0 and alloc.supports_prefix_caching:
            cached = alloc.match_prefix(request, request.num_tokens - 1)
            request.num_computed_tokens = cached
            request.num_cached_tokens = cached
        n = min(request.num_tokens_to_compute, max_tokens)
        if not alloc.allocate(request.request_id, request.num_computed_tokens + n):
            if request.num_computed_tokens:
                alloc.free(request.request_id)  # drop the prefix pages matched above
                request.num_computed_tokens = 0
                request.num_cached_tokens = 0
            return 0
        return n

    def preempt(self, request: Request) -> None:
        """Recompute preemption: free the request's pages and queue it first for re-prefill."""
        self.allocator.free(request.request_id)
        del self.running[request.request_id]
        request.num_computed_tokens = 0
        request.num_preemptions += 1
        request.status = RequestStatus.PREEMPTED
        self.waiting.appendleft(request)

    def remove(self, request: Request) -> None:
        """Forget a finished or aborted request (the engine frees its pages)."""
        if self.running.pop(request.request_id, None) is None:
            try:
                self.waiting.remove(request)
            except ValueError:
                pass

    @property
    def num_unfinished(self) -> int:
        return len(self.waiting) + len(self.running)
