"""FCFS with prefill priority and recompute preemption of the newest request (vLLM v0 style)."""

from __future__ import annotations

from odrive.request import Request
from odrive.schedulers.base import Scheduler
from odrive.schedulers.plan import StepPlan
from odrive.schedulers.registry import SCHEDULERS

STEADY_FOREVER = 1 << 30


@SCHEDULERS.register("fcfs")
class FCFSScheduler(Scheduler):
    """Admit waiting requests in arrival order and prefill them (a prefill-only step) whenever one fits;
    otherwise decode every running request. When a decode finds no free page, the newest running
    request is preempted (recompute) until the older ones fit.

    Prompts longer than ``max_prefill_length`` never get here (rejected at admission); after a
    preemption, prompt + outputs may exceed it and are re-prefilled in chunks of that size.
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._partial: dict[str, Request] = {}  # running requests whose prefill is incomplete
        self._last_decode_only = False

    def schedule(self) -> StepPlan:
        plan = StepPlan()
        self._schedule_prefills(plan)
        self._last_decode_only = not plan.num_scheduled_tokens and not plan.preempted
        if not plan.num_scheduled_tokens:
            self._schedule_decodes(plan)
            self._last_decode_only = self._last_decode_only and not plan.preempted
        return plan

    def _schedule_prefills(self, plan: StepPlan) -> None:
        cfg = self.config
        budget = cfg.token_budget
        tokens = plan.num_scheduled_tokens
        for req in list(self._partial.values()):
            if len(tokens) >= cfg.max_concurrent_prefill or budget <= 0:
                return
            if req.request_id not in self.running:
                continue
            n = min(req.num_tokens_to_compute, cfg.max_prefill_length, budget)
            if not self._allocate_or_preempt(req, n, plan):
                continue
            tokens[req.request_id] = n
            budget -= n
            if n == req.num_tokens_to_compute:
                del self._partial[req.request_id]
        if plan.preempted:
            # Out of pages: admitting now would re-admit the request just preempted (it heads the
            # queue) and recompute what was thrown away, step after step, while nothing else runs.
            return
        while (
            self.waiting
            and len(tokens) < cfg.max_concurrent_prefill
            and budget > 0
            and len(self.running) < cfg.max_concurrent_decodes
        ):
            req = self.waiting[0]
            if min(req.num_tokens_to_compute, cfg.max_prefill_length) > budget and tokens:
                return
            n = self.allocate_for_admission(req, min(cfg.max_prefill_length, budget))
            if n == 0:
                return
            self.admit(req)
            tokens[req.request_id] = n
            budget -= n
            if n < req.num_tokens_to_compute:
                self._partial[req.request_id] = req

    def _schedule_decodes(self, plan: StepPlan) -> None:
        tokens = plan.num_scheduled_tokens
        budget = self.config.token_budget
        for req in list(self.running.values()):
            if len(tokens) >= budget:
                return
            if req.request_id not in self.running or req.request_id in self._partial:
                continue
            if self._allocate_or_preempt(req, 1, plan):
                tokens[req.request_id] = 1

    def _allocate_or_preempt(self, req: Request, n: int, plan: StepPlan) -> bool:
        """Give ``req`` pages for ``n`` more tokens, preempting the newest running requests if needed."""
        while not self.allocator.allocate(req.request_id, req.num_computed_tokens + n):
            victim = next(reversed(self.running.values()))
            self._partial.pop(victim.request_id, None)
            self.preempt(victim)
            plan.preempted.append(victim.request_id)
            plan.num_scheduled_tokens.pop(victim.request_id, None)
            if victim is req:
                return False
        return True

    def remove(self, request: Request) -> None:
        self._partial.pop(request.request_id, None)
        super().remove(request)

    def steady_steps(self, plan: StepPlan) -> int:
        # A decode-only plan that scheduled every running request repeats until a request arrives or
        # finishes: admission failed on running-set size or free pages, and neither improves meanwhile.
        if self._last_decode_only and not self._partial and len(plan.num_scheduled_tokens) == len(self.running):
            return STEADY_FOREVER
        return 1
