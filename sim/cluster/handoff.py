"""The hand-off between a prefill pool and a decode pool: K/V transfers, decode admission, and their events.

After a request's prefill (its first token sampled on the prefill replica, whose pages it keeps), it is routed to a
decode replica. That replica admits it only when it has room for the whole request: pages for ``prompt +
max_tokens`` tokens and a running slot (``max_concurrent_decodes``), so it never preempts what it admitted. Until
then the request waits (FIFO per decode replica) and its K/V stays in the prefill replica's pages. On admission the
decode replica allocates the pages for the prompt's K/V, the transfer queues on the link, and the prefill replica
frees its copy when the transfer arrives; the decode replica adopts the request (its first token now delivered) at
its first step boundary from then on.

Everything happens at event times: a prefill's end (known when its last step is committed), a decode finish
(freeing room), a transfer's arrival. Events are processed in time order by whoever reaches a time first (a
replica's step boundary, or a timer), so results do not depend on how far replicas fast-forward.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import simpy

from odrive.core.request import Request, RequestStatus
from odrive.core.sampling_params import SamplingParams
from sim.cluster.handoff_bounds import BoundGroup
from sim.cluster.kv_link import KVLink, KVLinkConfig
from sim.cluster.routers import Router
from sim.cluster.routers.base import check_choice
from sim.workloads.request import Workload

if TYPE_CHECKING:
    from sim.cluster.disaggregated_replicas import DecodeReplica, PrefillReplica

RELEASE, HOLD_FREE, PREFILLED = 0, 1, 2  # event kinds; at equal times freed room is seen before new demand


@dataclass
class HandoffRecords:
    """Per-request hand-off data, as lists indexed by request (NaN / -1 where it did not happen)."""

    prefill_replica: list[int]
    prefill_done: list[float]
    kv_send: list[float]  # admitted by its decode replica: the transfer is queued
    kv_start: list[float]  # the transfer leaves on the link
    kv_bytes: list[float]
    first_scheduled: list[float]
    preemptions: list[int]
    cached: list[int]

    @classmethod
    def empty(cls, n: int) -> HandoffRecords:
        nan = [math.nan] * n
        return cls([-1] * n, nan.copy(), nan.copy(), nan.copy(), [0.0] * n, nan.copy(), [0] * n, [0] * n)

    def extras(self, i: int) -> tuple:
        """The values of the request row's hand-off columns (see ``HANDOFF_COLUMNS``)."""
        return self.prefill_replica[i], self.prefill_done[i], self.kv_send[i], self.kv_start[i], self.kv_bytes[i]


HANDOFF_COLUMNS = {
    "prefill_replica": "int32", "prefill_done_time": "float64", "kv_send_time": "float64",
    "kv_start_time": "float64", "kv_bytes": "float64",
}  # fmt: skip


class DecodeViews:
    """What a state-dependent decode router sees: per decode replica, admitted requests not yet finished and the
    share of its pages they reserve (exact at any time: admission and finishes are events)."""

    def __init__(self, replicas: Sequence[DecodeReplica]) -> None:
        self.replicas = replicas

    @property
    def num_replicas(self) -> int:
        return len(self.replicas)

    def outstanding(self, now: float) -> list[int]:
        return [r.credit_slots + len(r.pending) for r in self.replicas]

    def kv_load(self) -> list[float]:
        return [r.credit_pages / r.engine.allocator.num_usable_pages for r in self.replicas]


class Handoff:
    """Owns the events, the links and the decode replicas' admission credits of a disaggregated cluster."""

    def __init__(
        self, env: simpy.Environment, workload: Workload, prefill: Sequence[PrefillReplica],
        decode: Sequence[DecodeReplica],
        link: KVLinkConfig, kv_bytes_per_token: int, decode_router: Router, decode_plan: np.ndarray | None,
        groups: Sequence[BoundGroup],
    ) -> None:  # fmt: skip
        self.env = env
        self.prefill, self.decode = prefill, decode
        self.link_config = link
        self.links = [KVLink(link) for _ in range(link.num_links(len(prefill)))]
        self.kv_bytes_per_token = kv_bytes_per_token
        self.router, self.plan = decode_router, decode_plan
        self.views = DecodeViews(decode)
        self.groups = groups
        n = len(workload)
        # Python lists: indexed one request at a time, they are much cheaper than numpy arrays.
        self.times: list[float] = workload.arrival_times.tolist()
        self.prompts: list[int] = workload.prompt_lens.tolist()
        self.outputs: list[int] = workload.output_lens.tolist()
        self.priorities = workload.priorities
        self.token_ids = workload.prompt_token_ids
        self.records = HandoffRecords.empty(n)
        self.handed = bytearray(n)  # prefill ended: routed to a decode replica (or never coming)
        self.events: list[tuple[float, int, int, int]] = []
        self._armed_at = math.inf
        self._token = 0
        self._params: dict[int, SamplingParams] = {}
        self.max_pending = 0
        self.holds_skipped = 0
        self.num_pending = 0

    def group_of(self, decode_index: int) -> BoundGroup:
        return self.groups[decode_index] if len(self.groups) > 1 else self.groups[0]

    # --- events -----------------------------------------------------------------------------------
    def push(self, time: float, kind: int, replica: int, index: int) -> None:
        heapq.heappush(self.events, (time, kind, replica, index))
        if kind != PREFILLED:  # a prefill's end is its replica's step boundary: that replica processes it then
            self._arm(time)

    def _arm(self, time: float) -> None:
        """Make sure a timer processes the events at ``time`` even if no replica reaches that time."""
        if time < self._armed_at:
            self._armed_at = time
            self._token += 1
            token = self._token
            timer = self.env.timeout(max(0.0, time - self.env.now))
            timer.callbacks.append(lambda _event, token=token: self._on_timer(token))

    def _on_timer(self, token: int) -> None:
        if token != self._token:  # superseded by an earlier timer, which re-arms for what is left
            return
        self._armed_at = math.inf
        self.advance(self.env.now)
        if self.events:
            self._arm(self.events[0][0])

    def advance(self, now: float) -> None:
        """Process every event due by ``now``, in (time, kind, replica, request) order."""
        events = self.events
        while events and events[0][0] <= now:
            time, kind, replica, index = heapq.heappop(events)
            if kind == RELEASE:
                self._release(time, replica, index)
            elif kind == HOLD_FREE:
                self.prefill[replica].release_hold(index)
            else:
                self._prefilled(time, replica, index)

    # --- the prefill side -------------------------------------------------------------------------
    def on_prefilled(self, prefill_index: int, request: Request) -> bool:
        """A prefill replica committed the step that ends ``request``'s prefill. True if it is handed off (no row
        yet); False when there is nothing to decode (one output token): its row is final now."""
        i = int(request.request_id[1:])
        rec = self.records
        rec.prefill_replica[i] = prefill_index
        rec.prefill_done[i] = float(request.finish_time)  # type: ignore[arg-type]
        rec.first_scheduled[i] = float(request.first_scheduled_time)  # type: ignore[arg-type]
        rec.preemptions[i] = request.num_preemptions
        rec.cached[i] = request.num_cached_tokens
        if self.outputs[i] <= 1:
            self.handed[i] = 1
            return False
        self.prefill[prefill_index].hold(i, self.prompts[i])
        self.push(rec.prefill_done[i], PREFILLED, prefill_index, i)
        return True

    def gone(self, index: int) -> None:
        """Request ``index`` will never reach the decode pool (rejected or failed before its prefill ended)."""
        self.handed[index] = 1

    def _prefilled(self, now: float, prefill_index: int, i: int) -> None:
        self.handed[i] = 1
        if self.plan is not None:
            r = int(self.plan[i])
        else:
            r = check_choice(self.router.route(i, self.views, now), len(self.decode), type(self.router).__name__)
        replica = self.decode[r]
        replica.pending.append(i)
        self.num_pending += 1
        self._admit(now, replica)
        self.max_pending = max(self.max_pending, self.num_pending)  # those that could not be admitted at once

    def link_of(self, prefill_index: int) -> KVLink:
        """The link prefill replica ``prefill_index`` sends over."""
        return self.links[prefill_index if len(self.links) > 1 else 0]

    # --- the decode side --------------------------------------------------------------------------
    def pages_needed(self, replica: DecodeReplica, i: int) -> int:
        return replica.engine.allocator.pages_for(self.prompts[i] + self.outputs[i])

    def _release(self, now: float, r: int, i: int) -> None:
        replica = self.decode[r]
        replica.credit_pages -= self.pages_needed(replica, i)
        replica.credit_slots -= 1
        self._admit(now, replica)

    def _admit(self, now: float, replica: DecodeReplica) -> None:
        """Admit ``replica``'s waiting requests in order while the whole request fits; send their K/V."""
        alloc = replica.engine.allocator
        limit_slots = replica.engine.scheduler.config.max_concurrent_decodes
        while replica.pending:
            i = replica.pending[0]
            need = self.pages_needed(replica, i)
            if replica.credit_slots >= limit_slots or replica.credit_pages + need > alloc.num_usable_pages:
                return
            prompt = self.prompts[i]
            if not alloc.allocate(f"r{i}", prompt):  # only an allocator that fragments can refuse here
                return
            replica.pending.popleft()
            self.num_pending -= 1
            replica.credit_pages += need
            replica.credit_slots += 1
            p = self.records.prefill_replica[i]
            link = self.link_of(p)
            nbytes = float(prompt * self.kv_bytes_per_token)
            start, arrival = link.send(now, nbytes)
            rec = self.records
            rec.kv_send[i], rec.kv_start[i], rec.kv_bytes[i] = now, start, nbytes
            replica.expect(arrival, i)
            self.push(arrival, HOLD_FREE, p, i)

    def decode_request(self, i: int, arrival: float) -> Request:
        """The request a decode replica adopts when ``i``'s K/V arrive: its prompt computed, its first token out."""
        out = self.outputs[i]
        params = self._params.get(out)
        if params is None:
            params = self._params[out] = SamplingParams(max_tokens=out, ignore_eos=True)
        rec = self.records
        request = Request(
            request_id=f"r{i}",
            num_prompt_tokens=self.prompts[i],
            sampling_params=params,
            arrival_time=self.times[i],
            prompt_token_ids=None if self.token_ids is None else self.token_ids[i],
            priority=0 if self.priorities is None else int(self.priorities[i]),
            status=RequestStatus.RUNNING,
            num_output_tokens=1,
            num_computed_tokens=self.prompts[i],
            num_preemptions=rec.preemptions[i],
            num_cached_tokens=rec.cached[i],
            first_scheduled_time=rec.first_scheduled[i],
            first_token_time=arrival,
        )
        request.last_token_time = arrival  # inter-token gaps count from the first token
        return request
