"""The Scheduler interface: each step, pick which requests compute how many tokens."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque

from mypy_extensions import mypyc_attr

from odrive.allocators.base import PageAllocator
from odrive.core.request import Request, RequestStatus
from odrive.schedulers.config import SchedulerConfig
from odrive.schedulers.plan import StepPlan
from odrive.schedulers.swap_space import SwapSpace

STEADY_FOREVER = 1 << 30


@mypyc_attr(allow_interpreted_subclasses=True)  # compiled by odrive.accel; users subclass it
class Scheduler(ABC):
    """Owns the waiting queue and the running set; ``schedule`` returns a StepPlan.

    A policy implements ``schedule``. It must allocate pages (via ``self.allocator``) for every token
    it schedules, keep ``running`` within ``max_concurrent_decodes``, and may preempt with
    ``preempt``. The engine (shared by simulator and real engine) executes the plan, appends tokens,
    finishes requests and frees their pages — policies never duplicate that logic.

    Admit waiting requests with ``allocate_for_admission(request, max_tokens, plan)`` then ``admit``, and
    preempt with ``preempt(victim, plan)``: both honour ``config.preemption_mode`` (a swapped-out request is
    swapped back in when re-admitted), so a policy supports swap preemption without further work.
    """

    def __init__(self, config: SchedulerConfig, allocator: PageAllocator) -> None:
        self.config = config
        self.allocator = allocator
        self.waiting: deque[Request] = deque()
        self.running: dict[str, Request] = {}  # insertion order = admission order
        self.swap_space = SwapSpace(config.swap_space_pages)

    # --- policy ---------------------------------------------------------------------------------
    @abstractmethod
    def schedule(self) -> StepPlan: ...

    def steady_steps(self, plan: StepPlan) -> int:
        """How many identical decode-only steps ``plan`` would repeat, absent arrivals and finishes.

        The simulator fast-forwards that many steps at once. The safe default is 1; a policy returns
        more only when its decision provably cannot change until a request arrives or finishes.
        """
        return 1

    def steady_after_finish(self, plan: StepPlan) -> bool:
        """Whether a plan ``steady_steps`` declared steady stays the same, minus the finished requests, when
        some of them finish. The simulator then fast-forwards past finishes too. Default False (safe)."""
        return False

    def steady_while(self, plan: StepPlan, blocked: bool) -> int:
        """``steady_steps`` of a policy whose decode-only plan repeats while ``blocked`` (its own reason that
        admission fails until a request arrives or finishes): ``STEADY_FOREVER`` when ``plan`` also scheduled every
        running request, else 1."""
        return STEADY_FOREVER if blocked and len(plan.num_scheduled_tokens) == len(self.running) else 1

    def nothing_waits(self) -> bool:
        """``steady_after_finish`` of those policies: a finish only frees pages and room in the running set; with
        nothing waiting, nobody can use them."""
        return not self.waiting

    # --- queue management ---------------------------------------------------------------------------
    def add_request(self, request: Request) -> None:
        request.status = RequestStatus.WAITING
        self.waiting.append(request)

    def admit(self, request: Request) -> None:
        """Move the head-of-queue ``request`` (already given pages) into the running set."""
        self.waiting.remove(request) if self.waiting[0] is not request else self.waiting.popleft()
        request.status = RequestStatus.RUNNING
        self.running[request.request_id] = request

    def add_running(self, request: Request) -> None:
        """Take a request straight into the running set: its K/V already sit in pages the allocator holds for it
        (see ``Engine.adopt``). It is scheduled like any running request from the next step."""
        request.status = RequestStatus.RUNNING
        self.running[request.request_id] = request

    def allocate_for_admission(self, request: Request, max_tokens: int, plan: StepPlan | None = None) -> int:
        """Give a waiting ``request`` pages for its next prefill chunk, reusing cached prefix pages.

        Returns the chunk length (tokens to compute this step, at most ``max_tokens``), or 0 if the
        pages are not available — in which case nothing changed. A prefix-cache hit advances
        ``num_computed_tokens`` past the cached tokens (always leaving at least one token to compute,
        so the step yields logits for the next token). A swapped-out request gets pages for its computed
        tokens too, recorded in ``plan.swap_in`` (so ``plan`` is required for it): it resumes where it was.
        """
        alloc = self.allocator
        if not alloc.page_table(request.request_id):  # fresh, recomputed or swapped-out: (re)reserve
            alloc.reserve_hint(request.request_id, request.num_prompt_tokens + request.sampling_params.max_tokens)
        if request.request_id in self.swap_space:
            if plan is None:
                raise ValueError(f"re-admitting swapped-out request {request.request_id} needs the plan (swap-in)")
            n = min(request.num_tokens_to_compute, max_tokens)
            if not alloc.allocate(request.request_id, request.num_computed_tokens + n):
                return 0
            num_pages = self.swap_space.take(request.request_id)
            plan.swap_in[request.request_id] = list(alloc.page_table(request.request_id)[:num_pages])
            return n
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

    def preempt(self, request: Request, plan: StepPlan | None = None) -> None:
        """Preempt a running request: free its pages and queue it first. With ``plan`` it is recorded there
        (``preempted``; its tokens this step are dropped) and, in swap mode, its computed K/V pages go to the
        host tier when they fit (``plan.swap_out``); otherwise (or without ``plan``) it is recomputed later.
        """
        rid = request.request_id
        if plan is not None and rid in plan.swap_in:
            # Swapped in while planning this very step: its K/V never left the host; undo the swap-in.
            self.swap_space.put(rid, len(plan.swap_in.pop(rid)))
            self.allocator.free(rid)
        elif not (plan is not None and self.config.preemption_mode == "swap" and self._swap_out(request, plan)):
            self.allocator.free(rid)
            request.num_computed_tokens = 0
        del self.running[rid]
        request.num_preemptions += 1
        request.status = RequestStatus.PREEMPTED
        self.waiting.appendleft(request)
        if plan is not None:
            plan.preempted.append(rid)
            plan.num_scheduled_tokens.pop(rid, None)
        self.on_preempted(request)

    def _swap_out(self, request: Request, plan: StepPlan) -> bool:
        """Move ``request``'s computed K/V pages to the host tier; False if there is nothing to keep or no room."""
        num_pages = self.allocator.pages_for(request.num_computed_tokens)
        if num_pages == 0 or not self.swap_space.can_hold(num_pages):
            return False
        plan.swap_out[request.request_id] = list(self.allocator.page_table(request.request_id)[:num_pages])
        self.swap_space.put(request.request_id, num_pages)
        self.allocator.free(request.request_id)
        return True

    def allocate_or_preempt(self, request: Request, num_tokens: int, plan: StepPlan) -> bool:
        """Give running ``request`` pages for ``num_tokens`` more tokens, preempting ``choose_victim``'s picks
        until they fit. False if ``request`` itself was preempted."""
        while not self.allocator.allocate(request.request_id, request.num_computed_tokens + num_tokens):
            victim = self.choose_victim(request)
            self.preempt(victim, plan)
            if victim is request:
                return False
        return True

    def choose_victim(self, needy: Request) -> Request:
        """The running request to preempt when ``needy`` finds no free page: the newest by default."""
        return next(reversed(self.running.values()))

    # --- hooks ------------------------------------------------------------------------------------------
    def on_preempted(self, request: Request) -> None:
        """Called after ``request`` was preempted (forget per-request policy state here)."""
        return None

    def on_finished(self, request: Request) -> None:
        """Called by the engine after ``request`` finished (e.g. to learn output lengths)."""
        return None

    def remove(self, request: Request) -> None:
        """Forget a finished or aborted request (the engine frees its pages and any host copy)."""
        self.swap_space.take(request.request_id)
        if self.running.pop(request.request_id, None) is None:
            try:
                self.waiting.remove(request)
            except ValueError:
                pass

    @property
    def num_unfinished(self) -> int:
        return len(self.waiting) + len(self.running)
