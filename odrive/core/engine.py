"""The step loop shared by the simulator and the real engine: only the executor and the clock differ."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
from mypy_extensions import mypyc_attr

from odrive.core.decode_runs import UNRECORDED, commit_run, decode_chain, fit_pages, grow_tables, run_usage
from odrive.core.executor import ExecuteResult, Executor, SeqChunk, SwapOps
from odrive.core.invariants import check_plan
from odrive.core.metrics import MetricsRecorder, PageUsage
from odrive.core.request import SIMULATED_TOKEN_ID, FinishReason, Request, RequestStatus
from odrive.core.step_isolation import execute_isolating
from odrive.errors import InvariantViolation
from odrive.schedulers.base import Scheduler
from odrive.schedulers.plan import StepPlan


@dataclass
class SwapStats:
    """Totals of swap preemption traffic: requests and pages moved each way, and the time the copies took."""

    requests_out: int = 0
    requests_in: int = 0
    pages_out: int = 0
    pages_in: int = 0
    seconds: float = 0.0


@dataclass
class ForkStats:
    """Parallel samples forked from a request's prefill (``Request.fork_of``): forks made, pages they shared at the
    fork, pages copied on first write (copy-on-write) and the seconds the copies took."""

    forks: int = 0
    pages_shared: int = 0
    pages_copied: int = 0
    seconds: float = 0.0


@dataclass
class StepOutcome:
    """What one call of ``Engine.step`` did."""

    start: float
    duration: float
    num_steps: int
    plan: StepPlan
    finished: list[Request] = field(default_factory=list)
    new_token_ids: dict[str, int] = field(default_factory=dict)
    failed: list[Request] = field(default_factory=list)  # ended with FinishReason.ERROR: executing them raised

    @property
    def end(self) -> float:
        return self.start + self.duration


@mypyc_attr(allow_interpreted_subclasses=True)  # compiled by odrive.accel; users subclass it
class Engine:
    """Admit → schedule → (allocate, inside the policy) → execute → append tokens → free → record.

    Time is passed in (``now``) so the same loop runs under a simpy clock or the wall clock.
    ``stop_checker`` lets a front end end a request on a stop string after each new token.
    """

    def __init__(
        self,
        scheduler: Scheduler,
        executor: Executor,
        *,
        metrics: MetricsRecorder | None = None,
        eos_token_ids: Iterable[int] = (),
        check_invariants: bool = False,
        stop_checker: Callable[[Request], bool] | None = None,
    ) -> None:
        self.scheduler = scheduler
        self.allocator = scheduler.allocator
        self.executor = executor
        self.metrics = metrics or MetricsRecorder()
        self.eos_token_ids = frozenset(eos_token_ids)
        self.check_invariants = check_invariants
        self.stop_checker = stop_checker
        self.requests: dict[str, Request] = {}
        self.swap_stats = SwapStats()
        self.fork_stats = ForkStats()
        # Requests forked from one that still prefills (``Request.fork_of``), held aside until its first token:
        # parent id -> its held forks, and held fork id -> parent id.
        self._forks: dict[str, list[Request]] = {}
        self._held: dict[str, str] = {}
        self._caching = self.allocator.supports_prefix_caching
        self._window = scheduler.config.sliding_window  # with one, pages behind each request's window are released
        self.fast_forward = True  # False: steady decode runs step one at a time although the executor could batch them
        self.fast_forward_past_finishes = True  # see ``_fast_forward``; a cluster with state-aware routing opts out
        # Called with every StepOutcome (e.g. to keep each step's plan); a hook, so nothing needs to wrap ``step``.
        self.outcome_listeners: list[Callable[[StepOutcome], None]] = []
        # Called with every batch the executor ran and its result, and with every swap it copied and its seconds
        # (e.g. the profiler's replay keeps each step's shapes): hooks, so nothing needs to wrap the executor.
        self.execute_listeners: list[Callable[[list[SeqChunk], ExecuteResult], None]] = []
        self.swap_listeners: list[Callable[[SwapOps, float], None]] = []
        # The plan of the step in progress (None before the scheduler returns one): if a step raises, its requests.
        self.current_plan: StepPlan | None = None
        # Pages the caller holds in this engine's allocator outside any request (a disaggregated prefill replica's
        # K/V waiting to be sent): while any are held, a step that can schedule nothing waits, it is no deadlock.
        self.held_pages = 0

    # --- admission ------------------------------------------------------------------------------
    def validate(self, request: Request) -> str | None:
        """Why ``request`` can never be served, or None if it can."""
        cfg = self.scheduler.config
        if request.num_prompt_tokens < 1:
            return "empty prompt: at least one prompt token is required"
        if request.num_prompt_tokens > cfg.max_prefill_length:
            return (
                f"prompt has {request.num_prompt_tokens} tokens, more than max_prefill_length={cfg.max_prefill_length}"
            )
        total = request.num_prompt_tokens + request.sampling_params.max_tokens
        if cfg.max_model_len is not None and total > cfg.max_model_len:
            return (
                f"prompt ({request.num_prompt_tokens}) + max_tokens ({request.sampling_params.max_tokens}) = {total} "
                f"tokens exceeds max_model_len={cfg.max_model_len}"
            )
        need = self.allocator.pages_for(request.num_prompt_tokens + request.sampling_params.max_tokens)
        if need > self.allocator.num_usable_pages:
            return (
                f"prompt + max_tokens = {request.num_prompt_tokens + request.sampling_params.max_tokens} tokens "
                f"need {need} pages of {self.allocator.page_size}; the KV pool has only "
                f"{self.allocator.num_usable_pages}"
            )
        return None

    def add_request(self, request: Request, now: float | None = None) -> bool:
        """Queue ``request``; an unservable one is rejected (status ABORTED, reason REJECTED) and False
        is returned. A duplicate id raises ValueError without touching the existing request."""
        if request.request_id in self.requests:
            raise ValueError(f"request id {request.request_id!r} is already in flight")
        if now is not None:
            request.arrival_time = now
        reason = self.validate(request)
        if reason is not None:
            self.reject(request, reason)
            return False
        parent = self._fork_parent(request)
        self.requests[request.request_id] = request
        if parent is None:
            self.scheduler.add_request(request)
        else:  # held aside: it joins the running set when the parent's prefill samples its first token too
            request.status = RequestStatus.WAITING
            self._forks.setdefault(parent.request_id, []).append(request)
            self._held[request.request_id] = parent.request_id
        return True

    def _fork_parent(self, request: Request) -> Request | None:
        """The request ``request`` will be forked from (``Request.fork_of``), or None when it runs as an ordinary
        request: no fork asked, an allocator without fork, or a parent that is gone, already sampled or held
        itself. A parent with another prompt raises ValueError."""
        parent_id = request.fork_of
        if parent_id is None or not self.allocator.supports_fork:
            return None
        parent = self.requests.get(parent_id)
        if parent is None or parent.num_output_tokens or parent_id in self._held:
            return None
        mine, theirs = request.prompt_token_ids, parent.prompt_token_ids
        same_ids = (mine is None and theirs is None) or (
            mine is not None and theirs is not None and list(mine) == list(theirs))
        if parent.num_prompt_tokens != request.num_prompt_tokens or not same_ids:
            raise ValueError(f"request {request.request_id!r} forks from {parent_id!r}, whose prompt differs")
        return parent

    def reject(self, request: Request, reason: str) -> None:
        """End a request that never entered this engine as rejected (``reason`` recorded), at its arrival time."""
        self._end(request, RequestStatus.ABORTED, FinishReason.REJECTED, request.arrival_time, reason)

    def adopt(self, request: Request) -> None:
        """Take over a running ``request`` whose K/V already sit in pages this engine's allocator holds for it (its
        page table covers ``num_computed_tokens``): it joins the running set and decodes from the next step.
        Disaggregated serving uses it: a decode replica adopts what a prefill replica computed."""
        rid = request.request_id
        if rid in self.requests:
            raise ValueError(f"request id {rid!r} is already in flight")
        if self.allocator.num_tokens(rid) < request.num_computed_tokens:
            raise ValueError(
                f"request {rid}: its pages hold {self.allocator.num_tokens(rid)} tokens, "
                f"{request.num_computed_tokens} are computed"
            )
        if len(self.scheduler.running) >= self.scheduler.config.max_concurrent_decodes:
            raise ValueError(f"cannot adopt request {rid}: the running set is full")
        self.requests[rid] = request
        self.scheduler.add_running(request)

    def abort(
        self, request_id: str, now: float, message: str = "aborted by user", reason: FinishReason = FinishReason.ABORTED
    ) -> bool:
        """Cancel a queued or running request and free its pages (``reason`` ERROR: it failed). False if it is not
        in flight."""
        request = self.requests.get(request_id)
        if request is None:
            return False
        self._unhold(request)
        self.scheduler.remove(request)
        self.allocator.free(request_id)
        self.executor.discard_swapped(request_id)
        del self.requests[request_id]
        self._release_forks(request_id)
        self._end(request, RequestStatus.ABORTED, reason, now, message)
        return True

    def _unhold(self, request: Request) -> None:
        """Take a held fork out of its parent's group (it is aborted)."""
        parent_id = self._held.pop(request.request_id, None)
        if parent_id is not None:
            group = self._forks[parent_id]
            group.remove(request)
            if not group:
                del self._forks[parent_id]

    def _release_forks(self, parent_id: str, keep: int = 0) -> list[Request]:
        """Queue the held forks of ``parent_id`` after its first ``keep`` as ordinary requests (they prefill
        themselves); returns the ``keep`` kept held."""
        group = self._forks.pop(parent_id, [])
        for request in group[keep:]:
            del self._held[request.request_id]
            self.scheduler.add_request(request)
        if keep and group:
            self._forks[parent_id] = group[:keep]
        return group[:keep]

    @property
    def has_unfinished(self) -> bool:
        return bool(self.requests)

    # --- the step -------------------------------------------------------------------------------
    def step(self, now: float, horizon: float = math.inf) -> StepOutcome | None:
        """Run one step starting at ``now``. ``horizon`` (seconds from now until the next known
        arrival) bounds how far a simulator may fast-forward a steady decode run. Returns None when
        nothing could be scheduled."""
        outcome = self._step(now, horizon)
        if outcome is not None:
            for listener in self.outcome_listeners:
                listener(outcome)
        return outcome

    def _step(self, now: float, horizon: float) -> StepOutcome | None:
        sched = self.scheduler
        self.current_plan = None
        plan = sched.schedule()
        self.current_plan = plan
        if self.check_invariants:
            check_plan(sched, plan)
        copies = self.allocator.take_pending_copies()
        swap_time = self._apply_swaps(plan, copies)
        if plan.is_empty and plan.has_swaps:  # only copies this step
            usage = PageUsage.of(self.allocator.stats())
            self.metrics.on_step(now, swap_time, 1, 0, 0, 0, len(plan.preempted), 0, usage, len(sched.waiting),
                                 len(sched.running))  # fmt: skip
            return StepOutcome(now, swap_time, 1, plan)
        if plan.is_empty:
            if sched.waiting and not sched.running and not self.held_pages:
                head = sched.waiting[0]
                raise InvariantViolation(
                    "progress", f"nothing scheduled although request {head.request_id} waits and none runs"
                )
            return None
        running = sched.running
        batch = []
        num_prefill_seqs = num_prefill_tokens = 0
        room = sched.config.max_concurrent_decodes - len(running)  # running-set places left for forks
        for rid, n in plan.num_scheduled_tokens.items():
            req = running[rid]
            if req.first_scheduled_time is None:
                req.first_scheduled_time = now
            if req.is_prefill:
                num_prefill_seqs += 1
                num_prefill_tokens += n
            start = req.num_computed_tokens
            sample = start + n == req.num_tokens
            forks: tuple[Request, ...] = ()
            if sample and self._forks and rid in self._forks:  # its prefill ends: its forks sample too
                forks = tuple(self._release_forks(rid, max(room, 0)))
                room -= len(forks)
            batch.append(SeqChunk(req, start, n, self.allocator.page_table(rid), sample, forks))
        if (num_prefill_seqs == 0 and self.fast_forward and self.executor.supports_decode_runs and horizon > 0
                and not plan.has_swaps and not copies and self.allocator.supports_decode_runs
                and not self._releases_pages(batch)):  # fmt: skip
            steady = sched.steady_steps(plan)
            if steady > 1:
                outcome = self._fast_forward(now, plan, batch, steady, horizon)
                if outcome is not None:
                    return outcome
        result, faults = execute_isolating(self.executor, batch)
        for listener in self.execute_listeners:
            listener(batch, result)
        duration, sampled = swap_time + result.duration, result.sampled_token_ids
        # pages in use during the step, before finishes free any
        usage = PageUsage.of(self.allocator.stats()) if self.metrics.record_steps else UNRECORDED
        end = now + duration
        outcome = StepOutcome(now, duration, 1, plan)
        if faults:
            batch = self._fail_faulty(batch, faults, end, outcome)
        one_step_gaps = 0
        for chunk in batch:
            one_step_gaps += self._advance(chunk, sampled, end, outcome)
        if one_step_gaps:
            self.metrics.on_token_gap(duration, one_step_gaps)
        if self.check_invariants:
            self.allocator.check_invariants()
        self.metrics.on_step(
            now, duration, 1, num_prefill_seqs, num_prefill_tokens, len(batch) - num_prefill_seqs,
            len(plan.preempted), len(outcome.finished), usage, len(sched.waiting),
            len(sched.running),
        )  # fmt: skip
        return outcome

    def _advance(self, chunk: SeqChunk, sampled: dict[str, int] | None, end: float, outcome: StepOutcome) -> bool:
        """Apply one step to ``chunk``'s request; True when it produced a token one step after its previous one
        (an inter-token gap of the step's duration, which the caller records once for all such requests)."""
        req = chunk.request
        req.num_computed_tokens += chunk.num_tokens
        if self._caching:
            self.allocator.commit(req)
        if self._window is not None:  # the next query sees positions from num_computed_tokens - window + 1 on
            self.allocator.release_before(req.request_id, req.num_computed_tokens - self._window + 1)
        if not chunk.sample:
            return False
        token = None if sampled is None else sampled.get(req.request_id)
        if chunk.forks:  # before the parent may finish (and free the pages they share)
            self._fork(chunk, sampled, end, outcome)
        return self._emit(req, token, end, outcome)

    def _fork(self, chunk: SeqChunk, sampled: dict[str, int] | None, end: float, outcome: StepOutcome) -> None:
        """The parent's prefill ended: each of ``chunk.forks`` takes a page table sharing the parent's pages
        (copy-on-write), counts the prompt as computed, joins the running set and gets the token sampled for it."""
        parent = chunk.request
        pid = parent.request_id
        stats = self.fork_stats
        for req in chunk.forks:
            if self._held.get(req.request_id) != pid:
                continue
            self._unhold(req)
            self.allocator.fork(pid, req.request_id)
            stats.forks += 1
            stats.pages_shared += len(self.allocator.page_table(pid))
            req.num_computed_tokens = parent.num_computed_tokens
            req.first_scheduled_time = parent.first_scheduled_time
            self.scheduler.add_running(req)
            self._emit(req, None if sampled is None else sampled.get(req.request_id), end, outcome)
        self._release_forks(pid)  # none left unless some were not sampled

    def _emit(self, req: Request, token: int | None, end: float, outcome: StepOutcome) -> bool:
        """Append the token a step ``end``-ing then drew for ``req`` (None: simulated) and finish it if it is done;
        True when it came one step after its previous token."""
        if token is not None:
            req.output_token_ids.append(token)
            outcome.new_token_ids[req.request_id] = token
        elif self._caching and req.prompt_token_ids is not None:  # simulated: its pages cache as real outputs' do
            req.output_token_ids.append(SIMULATED_TOKEN_ID)
        req.num_output_tokens += 1
        if req.first_token_time is None:
            req.first_token_time = end
        last, one_step = req.last_token_time, False
        if last is not None:
            one_step = last == outcome.start
            if not one_step:
                self.metrics.on_token_gap(end - last)
        req.last_token_time = end
        reason = self._finish_reason(req, token)
        if reason is not None:
            self._finish(req, reason, end)
            outcome.finished.append(req)
        return one_step

    def _releases_pages(self, batch: list[SeqChunk]) -> bool:
        """Whether a request of ``batch`` may outgrow the sliding window (then pages are released as it decodes,
        and the batch steps one at a time: a decode run counts pages without releases)."""
        window = self._window
        return window is not None and any(
            c.request.num_prompt_tokens + c.request.sampling_params.max_tokens > window for c in batch
        )

    # --- simulator fast-forward -------------------------------------------------------------------
    def _fast_forward(self, now: float, plan: StepPlan, batch: list[SeqChunk], steady: int,
                      horizon: float) -> StepOutcome | None:  # fmt: skip
        """Run a steady decode plan up to ``steady`` steps at once (one simulated token per request per step);
        None when the pool cannot serve a second step (the step runs normally).

        The run ends at the first finish — or, without step rows and while the scheduler vouches that its plan
        stays the same minus finished requests (``Scheduler.steady_after_finish``), goes on past finishes: one
        engine call then covers everything up to the next arrival or page shortage. Request times, token counts
        and page tables equal stepping one at a time.

        With a prefix-caching allocator a run always ends at its first finish, every request grows before any
        finishes frees pages, as in the run's last step, and the pages the run fills are committed in the order
        stepping commits them (:func:`~odrive.core.decode_runs.commit_run`): which cached pages are evicted, and so
        every later hit, equal stepping too."""
        sched, record, caching = self.scheduler, self.metrics.record_steps, self._caching
        remaining = [min(c.request.remaining_output_tokens, steady) for c in batch]
        if not record and not caching and self.fast_forward_past_finishes and sched.steady_after_finish(plan):
            steps = remaining
        else:
            steps = [min(remaining)] * len(batch)
        steps = fit_pages(self.allocator, batch, steps)
        if max(steps) <= 1:
            return None
        ends, num_steps = decode_chain(self.executor, batch, steps, horizon)
        usage = run_usage(self.allocator, batch, np.diff(ends[:num_steps], prepend=0.0)) if record else UNRECORDED
        duration = float(ends[num_steps - 1])
        outcome = StepOutcome(now, duration, num_steps, plan)
        ran = [min(k, num_steps) for k in steps]
        first, one_step_gaps = float(ends[0]), 0
        order = sorted(range(len(batch)), key=ran.__getitem__)  # in finish order: finishes free pages first
        if caching:
            for i in order:
                grow_tables(self.allocator, batch[i], ran[i])
            commit_run(self.allocator, batch, ran)
        for i in order:
            chunk, k = batch[i], ran[i]
            if not caching:
                grow_tables(self.allocator, chunk, k)
            req = chunk.request
            req.num_computed_tokens += k
            req.num_output_tokens += k
            last = req.last_token_time
            if last == now:
                one_step_gaps += 1
            elif last is not None:
                self.metrics.on_token_gap(now + first - last)
            req.last_token_time = now + float(ends[k - 1])
            if req.num_output_tokens >= req.sampling_params.max_tokens:
                self._finish(req, FinishReason.LENGTH, now + float(ends[k - 1]))
                outcome.finished.append(req)
        if one_step_gaps:
            self.metrics.on_token_gap(first, one_step_gaps)
        self.metrics.on_run_gaps(ends, num_steps, ran)
        if self.check_invariants:
            self.allocator.check_invariants()
        self.metrics.on_step(now, duration, num_steps, 0, 0, len(batch), len(plan.preempted), len(outcome.finished),
                             usage, len(sched.waiting), len(sched.running))  # fmt: skip
        return outcome

    def _fail_faulty(self, batch: list[SeqChunk], faults: list[tuple[SeqChunk, Exception]], now: float,
                     outcome: StepOutcome) -> list[SeqChunk]:  # fmt: skip
        """End the requests whose execution raised (FinishReason.ERROR, pages freed); the rest of the batch."""
        for chunk, exc in faults:
            message = f"executing this request failed: {type(exc).__name__}: {exc}"
            self.abort(chunk.request_id, now, message, FinishReason.ERROR)
            outcome.failed.append(chunk.request)
        failed = {id(chunk) for chunk, _ in faults}
        return [chunk for chunk in batch if id(chunk) not in failed]

    def _finish_reason(self, req: Request, token: int | None) -> FinishReason | None:
        if token is not None and not req.sampling_params.ignore_eos:
            if token in req.sampling_params.stop_token_ids or token in self.eos_token_ids:
                return FinishReason.STOP
        if req.num_output_tokens >= req.sampling_params.max_tokens:
            return FinishReason.LENGTH
        if token is not None and self.stop_checker is not None and self.stop_checker(req):
            return FinishReason.STOP
        return None

    def _finish(self, req: Request, reason: FinishReason, now: float) -> None:
        self.scheduler.remove(req)
        self.allocator.free(req.request_id)
        del self.requests[req.request_id]
        self._end(req, RequestStatus.FINISHED, reason, now)
        self.scheduler.on_finished(req)

    def _apply_swaps(self, plan: StepPlan, copies: list[tuple[int, int]]) -> float:
        """Have the executor copy the plan's swapped pages (host ← device, then device ← host) and the pages
        copy-on-write duplicated while scheduling (``copies``, between the two: a page a preemption freed may be a
        copy's destination, a page a copy reads may be refilled by a swap-in); returns the seconds it took."""
        page_size = self.allocator.page_size
        if not copies:
            return self._swap(SwapOps(plan.swap_out, plan.swap_in, page_size)) if plan.has_swaps else 0.0
        seconds = 0.0
        if plan.swap_out:  # a request that copied a page and then was swapped out: its copy's source holds the K/V
            source = {dst: src for src, dst in copies}
            out = {rid: [source.get(p, p) for p in pages] for rid, pages in plan.swap_out.items()}
            seconds += self._swap(SwapOps(out, {}, page_size))
        copy_seconds = self.executor.copy_pages(copies, page_size)
        stats = self.fork_stats
        stats.pages_copied += len(copies)
        stats.seconds += copy_seconds
        seconds += copy_seconds
        if plan.swap_in:
            seconds += self._swap(SwapOps({}, plan.swap_in, page_size))
        return seconds

    def _swap(self, ops: SwapOps) -> float:
        seconds = self.executor.swap(ops)
        for listener in self.swap_listeners:
            listener(ops, seconds)
        stats = self.swap_stats
        stats.requests_out += len(ops.swap_out)
        stats.requests_in += len(ops.swap_in)
        stats.pages_out += ops.num_pages_out
        stats.pages_in += ops.num_pages_in
        stats.seconds += seconds
        return seconds

    def _end(self, req: Request, status: RequestStatus, reason: FinishReason, now: float, msg: str = "") -> None:
        req.status = status
        req.finish_reason = reason
        req.finish_time = now
        if msg:
            req.status_message = msg
        self.metrics.on_request_done(req)
