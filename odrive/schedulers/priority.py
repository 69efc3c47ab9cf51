"""Strict priority scheduling with priority preemption."""

from __future__ import annotations

from odrive.core.request import Request
from odrive.schedulers.plan import StepPlan
from odrive.schedulers.registry import SCHEDULERS
from odrive.schedulers.token_budget import TokenBudgetScheduler


def importance(request: Request) -> tuple[int, float]:
    """Sort key, most important first: lower ``priority`` value, then earlier arrival."""
    return request.priority, request.arrival_time


@SCHEDULERS.register("priority")
class PriorityScheduler(TokenBudgetScheduler):
    """``Request.priority``: a **lower value is more important** (0 before 1; negative values allowed), as
    in vLLM. Token-budget steps with chunked prefill in which running requests get budget and pages most
    important first, and waiting requests are admitted by (priority, arrival) with head-of-line blocking, so
    a less important request never starts while a more important one waits.

    Preemption picks the least important running request (then the newest): when a running request finds
    no free page (it may pick itself), and when the most important waiting request finds the running set
    full or too few free pages and strictly less important requests run — those are preempted only if that
    makes room. Equal priorities never preempt each other at admission. Strict priority can starve low
    priorities under sustained high-priority load (no aging).
    """

    def running_order(self) -> list[Request]:
        return sorted(self.running.values(), key=importance)  # stable: admission order breaks ties

    def next_candidate(self) -> Request:
        return min(self.waiting, key=importance)

    def choose_victim(self, needy: Request) -> Request:
        reqs = list(self.running.values())
        return max(enumerate(reqs), key=lambda ir: (ir[1].priority, ir[1].arrival_time, ir[0]))[1]

    def schedule_waiting(self, plan: StepPlan, budget: int, prefills: int) -> bool:
        cfg = self.config
        while self.waiting and budget > 0:
            req = self.next_candidate()
            is_prefill = req.is_prefill
            if is_prefill and prefills >= cfg.max_concurrent_prefill:
                return False
            full = len(self.running) >= cfg.max_concurrent_decodes
            chunk = min(cfg.chunk_limit, budget)
            n = 0 if full else self.allocate_for_admission(req, chunk, plan)
            if n == 0:
                if not self._make_room(req, chunk, plan):
                    return True  # nothing less important runs, or preempting it would not help
                budget, prefills = self.budget_left(plan)
                n = self.allocate_for_admission(req, min(cfg.chunk_limit, budget), plan) if budget > 0 else 0
                if n:
                    self.admit(req)
                    plan.num_scheduled_tokens[req.request_id] = n
                return False  # after preempting, admit no more this step (victims must not come straight back)
            self.admit(req)
            plan.num_scheduled_tokens[req.request_id] = n
            budget -= n
            prefills += is_prefill
        return True

    def _make_room(self, candidate: Request, chunk: int, plan: StepPlan) -> bool:
        """Preempt running requests strictly less important than ``candidate`` (least important, newest
        first) until it has a running slot and its first chunk's pages are free; False (and nothing
        preempted) if even all of them would not do."""
        alloc = self.allocator
        lower = [r for r in self.running.values() if importance(r) > importance(candidate)]
        lower.sort(key=lambda r: (r.priority, r.arrival_time), reverse=True)
        need_slot = len(self.running) >= self.config.max_concurrent_decodes
        tokens = candidate.num_computed_tokens + min(candidate.num_tokens_to_compute, chunk)
        need_pages = alloc.pages_for(tokens) - alloc.num_free_pages
        victims: list[Request] = []
        freed = 0
        for r in lower:
            if (not need_slot or victims) and freed >= need_pages:
                break
            victims.append(r)
            freed += len(alloc.page_table(r.request_id))
        if not victims or freed < need_pages:
            return False
        for v in victims:
            self.preempt(v, plan)
        return True
