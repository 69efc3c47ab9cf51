"""Unified token-budget scheduling with chunked prefill (vLLM v1 / Sarathi-Serve)."""

from __future__ import annotations

from odrive.core.request import Request
from odrive.schedulers.base import Scheduler
from odrive.schedulers.plan import StepPlan
from odrive.schedulers.registry import SCHEDULERS


@SCHEDULERS.register("sarathi")
class TokenBudgetScheduler(Scheduler):
    """No prefill or decode phases: each step spends ``max_num_batched_tokens`` on running requests first
    (in ``running_order``: a decode takes 1 token, an unfinished prefill a chunk of at most
    ``min(chunk_size, max_prefill_length)``), then on waiting requests in ``next_candidate`` order (arrival
    order here) with chunked prefill — so prefill chunks and decodes share one batch.

    Out of pages, a running request preempts ``choose_victim`` (the newest) until it fits. A step that
    preempted admits nothing (the victim heads the queue and would be re-admitted at once). Admission is
    head-of-line: it stops at the first candidate that does not fit, so no later request overtakes it.

    Subclasses change the policy through ``running_order``, ``next_candidate``, ``choose_victim``,
    ``allocate_running`` and ``schedule_waiting``.
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._steady = False

    def schedule(self) -> StepPlan:
        plan = StepPlan()
        budget, prefills = self.schedule_running(plan)
        self._steady = False
        if not plan.preempted:
            self._steady = self.schedule_waiting(plan, budget, prefills)
        return plan

    # --- policy hooks -------------------------------------------------------------------------------
    def running_order(self) -> list[Request]:
        """The order running requests get budget and pages: admission order."""
        return list(self.running.values())

    def next_candidate(self) -> Request:
        """The waiting request to admit next: the head of the queue (arrival order; preempted ones first)."""
        return self.waiting[0]

    def allocate_running(self, request: Request, num_tokens: int, plan: StepPlan) -> bool:
        """Pages for a running request's next ``num_tokens``, preempting if need be."""
        return self.allocate_or_preempt(request, num_tokens, plan)

    # --- the two phases of a step -----------------------------------------------------------------------
    def schedule_running(self, plan: StepPlan) -> tuple[int, int]:
        """Schedule running requests; returns the budget left and the number of prefills scheduled."""
        cfg = self.config
        budget, prefills = cfg.token_budget, 0
        tokens = plan.num_scheduled_tokens
        for req in self.running_order():
            if budget <= 0:
                break
            if req.request_id not in self.running:  # preempted earlier this step
                continue
            is_prefill = req.is_prefill
            if is_prefill and prefills >= cfg.max_concurrent_prefill:
                continue
            n = min(req.num_tokens_to_compute, cfg.chunk_limit, budget)
            num_preempted = len(plan.preempted)
            if self.allocate_running(req, n, plan):
                tokens[req.request_id] = n
            if len(plan.preempted) != num_preempted:  # victims' tokens were dropped from the plan
                budget, prefills = self.budget_left(plan)
            elif req.request_id in tokens:
                budget -= n
                prefills += is_prefill
        return budget, prefills

    def schedule_waiting(self, plan: StepPlan, budget: int, prefills: int) -> bool:
        """Admit waiting requests with the budget left. Returns True when admission stopped for a reason that
        decode-only steps cannot change before an arrival or a finish (see ``steady_steps``)."""
        cfg = self.config
        while self.waiting and budget > 0 and len(self.running) < cfg.max_concurrent_decodes:
            req = self.next_candidate()
            is_prefill = req.is_prefill
            if is_prefill and prefills >= cfg.max_concurrent_prefill:
                return False
            n = self.allocate_for_admission(req, min(cfg.chunk_limit, budget), plan)
            if n == 0:
                return True  # out of pages: decodes only take more of them
            self.admit(req)
            plan.num_scheduled_tokens[req.request_id] = n
            budget -= n
            prefills += is_prefill
        return True

    def budget_left(self, plan: StepPlan) -> tuple[int, int]:
        """(token budget left, prefills scheduled) for ``plan`` as it stands."""
        prefills = sum(self.running[rid].is_prefill for rid in plan.num_scheduled_tokens)
        return self.config.token_budget - plan.total_tokens, prefills

    def steady_steps(self, plan: StepPlan) -> int:
        # A decode-only plan that scheduled every running request, preempted nothing and admitted nothing
        # (blocked by the running-set size, the budget or free pages, which decodes only shrink; or nothing
        # waits) repeats until a request arrives or finishes. The waiting order must not change meanwhile:
        # true for every order keyed on static request attributes.
        return self.steady_while(plan, self._steady and not plan.preempted and not plan.has_swaps)

    def steady_after_finish(self, plan: StepPlan) -> bool:
        return self.nothing_waits()


SCHEDULERS.add("token-budget", TokenBudgetScheduler)
