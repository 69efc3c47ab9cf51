"""FCFS with prefill priority and recompute preemption of the newest request (vLLM v0 style)."""

from __future__ import annotations

from mypy_extensions import mypyc_attr

from odrive.allocators.base import PageAllocator
from odrive.core.request import Request
from odrive.schedulers.base import Scheduler
from odrive.schedulers.config import SchedulerConfig
from odrive.schedulers.plan import StepPlan
from odrive.schedulers.registry import SCHEDULERS


@mypyc_attr(allow_interpreted_subclasses=True)
class FCFSScheduler(Scheduler):
    """Admit waiting requests in arrival order and prefill them (a prefill-only step) whenever one fits;
    otherwise decode every running request. When a decode finds no free page, the newest running
    request is preempted (recompute, or swap if configured) until the older ones fit.

    Prompts longer than ``max_prefill_length`` never get here (rejected at admission); after a
    preemption, prompt + outputs may exceed it and are re-prefilled in chunks of that size. In swap mode a
    swapped-in request that only needs its next decode joins that step's decodes (vLLM v0 style).
    """

    def __init__(self, config: SchedulerConfig, allocator: PageAllocator) -> None:
        super().__init__(config, allocator)
        self._partial: dict[str, Request] = {}  # running requests whose prefill is incomplete
        self._last_decode_only = False

    def schedule(self) -> StepPlan:
        plan = StepPlan()
        self._schedule_prefills(plan)
        self._last_decode_only = not plan.num_scheduled_tokens and not plan.preempted
        if not plan.num_scheduled_tokens or self._only_swapped_in_decodes(plan):
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
            if not self.allocate_or_preempt(req, n, plan):
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
            n = self.allocate_for_admission(req, min(cfg.max_prefill_length, budget), plan)
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
            if req.request_id not in self.running or req.request_id in self._partial or req.request_id in tokens:
                continue
            if self.allocate_or_preempt(req, 1, plan):
                tokens[req.request_id] = 1

    def _only_swapped_in_decodes(self, plan: StepPlan) -> bool:
        """True when every request scheduled so far was swapped in and needs only its next decode."""
        return bool(plan.swap_in) and all(
            rid in plan.swap_in and not self.running[rid].is_prefill for rid in plan.num_scheduled_tokens
        )

    def on_preempted(self, request: Request) -> None:
        self._partial.pop(request.request_id, None)

    def remove(self, request: Request) -> None:
        self._partial.pop(request.request_id, None)
        super().remove(request)

    def steady_steps(self, plan: StepPlan) -> int:
        # A decode-only plan that scheduled every running request repeats until a request arrives or
        # finishes: admission failed on running-set size or free pages, and neither improves meanwhile.
        return self.steady_while(plan, self._last_decode_only and not self._partial)

    def steady_after_finish(self, plan: StepPlan) -> bool:
        return self.nothing_waits()


SCHEDULERS.add("fcfs", FCFSScheduler)  # by call, not decorator: see odrive.accel
