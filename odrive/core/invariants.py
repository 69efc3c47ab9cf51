"""Checks of a scheduler's plan against the engine's invariants; switched on with check_invariants=True.

Each failure raises InvariantViolation naming the invariant, so a user's own policy that breaks one
is caught at the step where it happened.
"""

from __future__ import annotations

from odrive.errors import InvariantViolation
from odrive.schedulers.base import Scheduler
from odrive.schedulers.plan import StepPlan


def check_plan(sched: Scheduler, plan: StepPlan) -> None:
    cfg = sched.config
    alloc = sched.allocator
    if plan.total_tokens > cfg.token_budget:
        raise InvariantViolation("token-budget", f"{plan.total_tokens} tokens > budget {cfg.token_budget}")
    if len(sched.running) > cfg.max_concurrent_decodes:
        raise InvariantViolation(
            "max-concurrent-decodes", f"{len(sched.running)} running > {cfg.max_concurrent_decodes}"
        )
    num_prefills = 0
    for rid, n in plan.num_scheduled_tokens.items():
        req = sched.running.get(rid)
        if req is None:
            raise InvariantViolation("scheduled-is-running", f"request {rid} scheduled but not running")
        if not 1 <= n <= req.num_tokens_to_compute:
            raise InvariantViolation(
                "tokens-in-range", f"request {rid}: {n} tokens scheduled, {req.num_tokens_to_compute} to compute"
            )
        if req.is_prefill:
            num_prefills += 1
            if n > cfg.max_prefill_length:
                raise InvariantViolation(
                    "max-prefill-length", f"request {rid}: chunk of {n} > {cfg.max_prefill_length}"
                )
        released = alloc.num_released(rid)
        if released and (cfg.sliding_window is None
                         or released * alloc.page_size > req.num_computed_tokens - cfg.sliding_window + 1):
            raise InvariantViolation(
                "released-behind-window", f"request {rid} computes from token {req.num_computed_tokens} with "
                f"sliding_window={cfg.sliding_window}, but its first {released} pages are released",
            )  # fmt: skip
        need = req.num_computed_tokens + n
        if alloc.num_tokens(rid) < need or alloc.slots_held(rid) < need:
            raise InvariantViolation(
                "pages-allocated", f"request {rid} computes up to token {need} but holds {alloc.slots_held(rid)} slots"
            )
    if num_prefills > cfg.max_concurrent_prefill:
        raise InvariantViolation(
            "max-concurrent-prefill", f"{num_prefills} prefills > {cfg.max_concurrent_prefill}"
        )
    waiting_ids = {r.request_id for r in sched.waiting}
    if len(waiting_ids) != len(sched.waiting):
        raise InvariantViolation("queued-once", "a request is in the waiting queue twice")
    both = waiting_ids & sched.running.keys()
    if both:
        raise InvariantViolation("waiting-or-running", f"requests both waiting and running: {sorted(both)}")
    for rid in plan.preempted:
        if rid in sched.running or rid in plan.num_scheduled_tokens:
            raise InvariantViolation("preempted-not-running", f"preempted request {rid} still runs")
        if alloc.page_table(rid):
            raise InvariantViolation("preempted-pages-freed", f"preempted request {rid} still holds pages")
    for rid in waiting_ids:
        if alloc.page_table(rid):
            raise InvariantViolation("waiting-holds-no-pages", f"waiting request {rid} holds pages")
    check_swaps(sched, plan, waiting_ids)
    alloc.check_invariants()


def check_swaps(sched: Scheduler, plan: StepPlan, waiting_ids: set[str]) -> None:
    """Swap preemption: swapped-out requests were preempted and wait; swapped-in ones run this step with
    their computed tokens' pages listed in order; the host tier stays within its capacity."""
    alloc = sched.allocator
    preempted = set(plan.preempted)
    for rid in plan.swap_out:
        if rid not in preempted:
            raise InvariantViolation("swap-out-is-preempted", f"request {rid} swapped out but not preempted")
    for rid, pages in plan.swap_in.items():
        req = sched.running.get(rid)
        if req is None or rid not in plan.num_scheduled_tokens:
            raise InvariantViolation("swap-in-is-scheduled", f"request {rid} swapped in but not scheduled")
        want = alloc.pages_for(req.num_computed_tokens)
        if len(pages) != want or list(pages) != alloc.page_table(rid)[:want]:
            raise InvariantViolation(
                "swap-in-pages",
                f"request {rid}: swap-in into {pages}, but its {req.num_computed_tokens} computed tokens live in "
                f"{alloc.page_table(rid)[:want]}",
            )
    space = sched.swap_space
    if space.used_pages > space.capacity_pages:
        raise InvariantViolation("swap-space", f"{space.used_pages} host pages used > capacity {space.capacity_pages}")
    for rid in space.held:
        if rid not in waiting_ids:
            raise InvariantViolation("swapped-is-waiting", f"request {rid} has K/V on the host but is not waiting")
