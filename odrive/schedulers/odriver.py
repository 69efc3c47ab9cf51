"""EasyDeL vSurge oDriver's scheduling, as a baseline: one prefill per step mixed with the decodes."""

from __future__ import annotations

from odrive.schedulers.base import Scheduler
from odrive.schedulers.plan import StepPlan
from odrive.schedulers.registry import SCHEDULERS

DECODE_HEAVY_FRACTION = 0.95


@SCHEDULERS.register("odriver")
class ODriverScheduler(Scheduler):
    """Each step runs at most one prefill (its chunk padded to a ``prefill_lengths`` bucket by the executor)
    in one ragged batch with every running decode. Prefill has priority — it takes the token budget first —
    unless the running set exceeds 95% of ``max_concurrent_decodes``: then the step decodes only.
    Waiting requests start in arrival order (head-of-line).

    Where this differs from oDriver: oDriver raised when it ran out of pages; here a request that finds no
    free page preempts the newest running request (recompute, or swap if configured), like ``fcfs``.
    oDriver ignored ``max_concurrent_prefill``, the token budget and ``max_prefill_length``; here a prompt
    (or a recompute-preempted prompt + outputs) longer than ``min(max_prefill_length, budget)`` is prefilled
    in chunks over several steps, each the step's one prefill, and decodes that the budget left by the
    prefill cannot hold wait a step.
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._steady = False

    def schedule(self) -> StepPlan:
        cfg = self.config
        plan = StepPlan()
        tokens = plan.num_scheduled_tokens
        budget = cfg.token_budget
        limit = min(cfg.max_prefill_length, budget)
        # 1. The step's one prefill: an unfinished one first (it holds pages), else the queue's head.
        partial = next((r for r in self.running.values() if r.is_prefill), None)
        head = None
        reserved = 0  # budget held back for the head's prefill
        if partial is not None:
            n = min(partial.num_tokens_to_compute, limit)
            if self.allocate_or_preempt(partial, n, plan):
                tokens[partial.request_id] = n
        elif self.waiting and self._may_admit():
            head = self.waiting[0]
            reserved = min(head.num_tokens_to_compute, limit)
        # 2. Decodes, in admission order, with the budget the prefill left.
        self._decode(plan, budget - plan.total_tokens - reserved)
        # 3. Admit the head with the reserved budget, unless this step preempted (it would re-admit a victim);
        #    if it does not fit, the decodes get the budget it would have taken.
        self._steady = partial is None and head is None or (head is not None and not plan.preempted)
        if head is not None and not plan.preempted:
            n = self.allocate_for_admission(head, reserved, plan)
            if n:
                self.admit(head)
                tokens[head.request_id] = n
            else:
                self._decode(plan, budget - plan.total_tokens)
        return plan

    def _decode(self, plan: StepPlan, budget: int) -> None:
        """Decode running requests not yet scheduled, in admission order, within ``budget`` tokens."""
        tokens = plan.num_scheduled_tokens
        for req in list(self.running.values()):
            if budget <= 0:
                return
            if req.request_id not in self.running or req.is_prefill or req.request_id in tokens:
                continue
            if self.allocate_or_preempt(req, 1, plan):
                tokens[req.request_id] = 1
                budget -= 1

    def _may_admit(self) -> bool:
        cfg = self.config
        running = len(self.running)
        return running < cfg.max_concurrent_decodes and running <= DECODE_HEAVY_FRACTION * cfg.max_concurrent_decodes

    def steady_steps(self, plan: StepPlan) -> int:
        # Decode-only, every running request decoded, nothing preempted: admission was blocked by the running
        # set (size or the 95% rule), by free pages (decodes only take more), or nothing waits.
        return self.steady_while(plan, self._steady and not plan.preempted and not plan.has_swaps)

    def steady_after_finish(self, plan: StepPlan) -> bool:
        return self.nothing_waits()
