"""Decode-priority scheduling: every running decode first, prefills only with what is left."""

from __future__ import annotations

from odrive.core.request import Request
from odrive.schedulers.plan import StepPlan
from odrive.schedulers.registry import SCHEDULERS
from odrive.schedulers.token_budget import TokenBudgetScheduler


@SCHEDULERS.register("decode-priority")
class DecodePriorityScheduler(TokenBudgetScheduler):
    """Each step decodes all running requests first (admission order; out of pages, the newest running
    request is preempted), then continues unfinished prefills and admits waiting requests (arrival order,
    chunked) with the leftover budget and pages. An unfinished prefill never preempts a decode: while any
    decode runs it takes only free pages (without decodes it preempts the newest, so prefills cannot
    deadlock each other holding pages). Minimises inter-token latency at the cost of time to first token.
    """

    def running_order(self) -> list[Request]:
        reqs = list(self.running.values())
        return [r for r in reqs if not r.is_prefill] + [r for r in reqs if r.is_prefill]

    def allocate_running(self, request: Request, num_tokens: int, plan: StepPlan) -> bool:
        if request.is_prefill and any(not self.running[rid].is_prefill for rid in plan.num_scheduled_tokens):
            return self.allocator.allocate(request.request_id, request.num_computed_tokens + num_tokens)
        return self.allocate_or_preempt(request, num_tokens, plan)
