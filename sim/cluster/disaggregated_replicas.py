"""The replicas of a disaggregated cluster: prefill replicas that keep each request's K/V until it is sent, decode
replicas that adopt requests whose K/V arrived, and the recorder that gives both their hand-off columns."""

from __future__ import annotations

import heapq
from collections import deque
from typing import TYPE_CHECKING, Any

import simpy

from odrive.core.metrics import MetricsRecorder
from odrive.core.request import FinishReason, Request
from odrive.core.sampling_params import SamplingParams
from sim.cluster.handoff import RELEASE
from sim.cluster.recorder import RowBuffer, StreamingRecorder
from sim.cluster.replica import Replica

if TYPE_CHECKING:
    from sim.cluster.disaggregated import DisaggregatedSimulator


class HandoffRecorder(StreamingRecorder):
    """Request rows with the hand-off columns. A prefill replica hands each finished prefill to the decode pool (its
    row is written when decoding ends); a decode replica's finishes free room for the next admissions."""

    def __init__(
        self, replica: int, requests: RowBuffer, steps: RowBuffer | None, cluster: DisaggregatedSimulator,
        decode_index: int | None = None,
    ) -> None:  # fmt: skip
        super().__init__(replica, requests, steps, itl=cluster.itl)  # one inter-token latency histogram for all
        self.cluster = cluster
        self.decode_index = decode_index

    def on_request_done(self, r: Request) -> None:
        MetricsRecorder.on_request_done(self, r)
        row = self._requests.pop()
        self._num_done += 1
        handoff = self.cluster.handoff
        i = int(r.request_id[1:])
        if self.decode_index is None:
            if r.finish_reason is FinishReason.LENGTH:
                if handoff.on_prefilled(self.replica, r):
                    return
            else:
                handoff.gone(i)
        else:
            handoff.push(float(r.finish_time), RELEASE, self.decode_index, i)  # type: ignore[arg-type]
        self._request_rows.append((self.replica, *row, *handoff.records.extras(i)))


class PrefillReplica(Replica):
    """Computes prompts (each request with ``max_tokens=1``: the prefill samples the first token) and keeps a
    finished prefill's pages, as a page table of its own, until its K/V has been sent."""

    def __init__(self, *args: Any, cluster: DisaggregatedSimulator, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.cluster = cluster
        self._holds: dict[int, int] = {}  # request -> pages its K/V occupies here until sent
        self._released: simpy.Event | None = None
        self._first_token = SamplingParams(max_tokens=1, ignore_eos=True)

    def _add(self, i: int) -> None:
        request = self._request(i)  # as a whole: the decode pool must be able to hold it
        reason = self.cluster.decode_reason(request)
        if reason is not None:
            self.engine.reject(request, reason)
            return
        request.sampling_params = self._first_token  # the prefill computes the prompt and samples one token
        self.engine.add_request(request)

    def deliver(self, index: int) -> None:
        self.cluster._prefill_of[index] = self.index
        super().deliver(index)

    def _admit(self, now: float) -> None:
        self.cluster.handoff.advance(now)
        super()._admit(now)

    def hold(self, i: int, num_tokens: int) -> None:
        """Keep request ``i``'s K/V (``num_tokens`` tokens) in this replica's pages until :meth:`release_hold`."""
        alloc = self.engine.allocator
        if alloc.allocate(f"r{i}#kv", num_tokens):
            pages = alloc.pages_for(num_tokens)
            self._holds[i] = pages
            self.engine.held_pages += pages
        else:  # a prefix cache kept some of its pages shared: nothing more to hold
            self.cluster.handoff.holds_skipped += 1

    def release_hold(self, i: int) -> None:
        pages = self._holds.pop(i, 0)
        if pages:
            self.engine.allocator.free(f"r{i}#kv")
            self.engine.held_pages -= pages
        if self._released is not None and not self._released.triggered:
            self._released.succeed()

    @property
    def num_holds(self) -> int:
        return len(self._holds)

    def _wait(self) -> simpy.Event | None:
        base = super()._wait()
        if not self._holds:
            return base
        self._released = self.env.event()
        return self._released if base is None else self.env.any_of([base, self._released])


class DecodeReplica(Replica):
    """Adopts requests whose K/V arrived (at its first step boundary from then on) and decodes them. Admission
    credits (``credit_pages``/``credit_slots``) count the admitted, unfinished requests' final sizes."""

    def __init__(self, *args: Any, cluster: DisaggregatedSimulator, decode_index: int, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.cluster = cluster
        self.decode_index = decode_index
        self.pending: deque[int] = deque()  # prefilled, routed here, waiting for room (FIFO)
        self.joins: list[tuple[float, int]] = []  # heap of (K/V arrival, request) of admitted transfers
        self.credit_pages = 0
        self.credit_slots = 0

    def expect(self, arrival: float, i: int) -> None:
        """Request ``i``'s K/V arrives at ``arrival`` (its pages are allocated here already)."""
        heapq.heappush(self.joins, (arrival, i))
        if self._wake is not None and not self._wake.triggered:
            self._wake.succeed()

    def _admit(self, now: float) -> None:
        handoff = self.cluster.handoff
        handoff.advance(now)
        joins, adopt = self.joins, self.engine.adopt
        while joins and joins[0][0] <= now:
            arrival, i = heapq.heappop(joins)
            adopt(handoff.decode_request(i, arrival))
        # Waiting requests are admitted only when a finish frees room: a decode run must end at the first finish.
        self.engine.fast_forward_past_finishes = not self.pending

    def _wait(self) -> simpy.Event | None:
        self._wake = self.env.event()
        if self.joins:
            return self.env.any_of([self._wake, self.env.timeout(self.joins[0][0] - self.env.now)])
        return self._wake
