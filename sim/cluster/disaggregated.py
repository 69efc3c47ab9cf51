"""Disaggregated serving: a prefill pool and a decode pool on one simpy clock, K/V shipped between them.

Arrivals are routed to the prefill pool (``prefill_router``), which computes each prompt and samples its first
token. The request is then routed to a decode replica (``decode_router``: a state-independent router decides at
arrival, a state-dependent one when the prefill ends, on the decode replicas' admitted load), which admits it once
it has room for the whole request; its K/V (``prompt × kv_bytes_per_token`` bytes of the model spec) crosses the
link and the decode replica decodes the rest. TTFT counts until the K/V — and with it the first token — reaches
the decode replica, which streams every token (see :mod:`sim.cluster.handoff`). Each pool has its own
:class:`SimConfig` (accelerator, TP, scheduler, allocator, limits); both must serve the same model.

``simulate_disaggregated(prefill_cfg, decode_cfg, workload, prefill_replicas=2, decode_replicas=6)`` or
``python -m sim.cluster --prefill-replicas 2 --decode-replicas 6 --kv-link-gbps 400``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pandas as pd

from odrive.core.request import Request
from odrive.errors import ConfigError, InvariantViolation
from sim.cluster.disaggregated_replicas import DecodeReplica, HandoffRecorder, PrefillReplica
from sim.cluster.disaggregated_summary import summarize_disaggregated
from sim.cluster.handoff import HANDOFF_COLUMNS, Handoff
from sim.cluster.handoff_bounds import BoundGroup
from sim.cluster.kv_link import KVLinkConfig
from sim.cluster.replica import Replica
from sim.cluster.routers import Arrivals, Router, make_router
from sim.cluster.simulator import ClusterResult, ClusterSimulator
from sim.config import SimConfig
from sim.model_spec import get_model_spec
from sim.workloads.request import Workload


class DisaggregatedSimulator(ClusterSimulator):
    """A prefill pool of ``prefill_replicas`` × ``prefill`` and a decode pool of ``decode_replicas`` × ``decode``
    behind their own routers, joined by K/V links (``link``). Same options as :class:`ClusterSimulator`
    (``horizon`` applies to the prefill pool's routing). Deterministic per seed, and the same whether or not
    replicas fast-forward decode runs."""

    EXTRA_COLUMNS = HANDOFF_COLUMNS

    def __init__(
        self,
        prefill: SimConfig,
        decode: SimConfig,
        workload: Workload,
        *,
        prefill_replicas: int,
        decode_replicas: int,
        prefill_router: str | Router = "round-robin",
        decode_router: str | Router = "round-robin",
        link: KVLinkConfig | None = None,
        seed: int = 0,
        **kw: Any,
    ) -> None:
        if prefill_replicas < 1 or decode_replicas < 1:
            raise ConfigError(
                f"a disaggregated cluster needs >= 1 prefill and >= 1 decode replica, got {prefill_replicas} and "
                f"{decode_replicas} (prefill_replicas=0 means colocated: use simulate_cluster)"
            )
        if prefill.model != decode.model:
            raise ConfigError(f"prefill pool serves {prefill.model!r} but decode pool {decode.model!r}: K/V differ")
        self.handoff: Handoff = None  # type: ignore[assignment]  # built once both pools exist
        self._prefill_of: list[int] = []
        self.decode_config = decode
        self.link_config = link or KVLinkConfig()
        super().__init__(prefill, workload, prefill_router, num_replicas=prefill_replicas, seed=seed, **kw)
        first = self.num_prefill = prefill_replicas
        router = make_router(decode_router, decode_replicas, seed) if isinstance(decode_router, str) else decode_router
        if router.num_replicas != decode_replicas:
            raise ValueError(f"decode router built for {router.num_replicas} replicas, the pool has {decode_replicas}")
        self.decode_router_name = decode_router if isinstance(decode_router, str) else type(decode_router).__name__
        router.prepare(Arrivals(workload.arrival_times, workload.prompt_lens, kw.get("prefix_keys")))
        plan = router.plan()
        plan = None if plan is None else np.asarray(plan, dtype=np.int64)
        self.decode_replicas = [
            DecodeReplica(
                first + j, decode, self.env, self.requests,
                HandoffRecorder(first + j, self._request_rows, self._step_rows, self, decode_index=j),
                horizon_fn=self._decode_horizon, cluster=self, decode_index=j,
            )
            for j in range(decode_replicas)
        ]  # fmt: skip
        spec = get_model_spec(prefill.model)
        n = len(workload)
        self._prefill_of = [-1] * n  # each request's prefill replica, once known
        if self.routed_ahead:
            for p, replica in enumerate(self.replicas):
                for i in replica._own:
                    self._prefill_of[i] = p
        self._bounds_inputs(workload, spec.kv_bytes_per_token)
        floor, transfer = np.array(self._prefill_floor), np.array(self._transfer)
        static = np.asarray(workload.arrival_times, dtype=np.float64) + floor + transfer
        self._arrival_times: list[float] = workload.arrival_times.tolist()
        orders = [np.flatnonzero(plan == j) for j in range(decode_replicas)] if plan is not None else [np.arange(n)]
        groups = [BoundGroup(order, static, self._current_bound) for order in orders]
        self.handoff = Handoff(
            self.env, workload, self.replicas, self.decode_replicas, self.link_config, spec.kv_bytes_per_token,
            router, plan, groups,
        )  # fmt: skip

    def _bounds_inputs(self, workload: Workload, kv_bytes_per_token: int) -> None:
        """Per request: the shortest possible prefill and transfer (for the decode replicas' horizons)."""
        engine = self.replicas[0].engine
        self._latency = engine.executor.latency_model  # type: ignore[attr-defined]
        self._prefill_seconds: dict[int, float] = {}
        prompts = np.asarray(workload.prompt_lens, dtype=np.int64)
        caching = engine.allocator.supports_prefix_caching  # a cache hit can skip all but one token of a prompt
        lengths, inverse = np.unique(np.ones_like(prompts) if caching else prompts, return_inverse=True)
        floor = [self._min_prefill(int(k)) for k in lengths]
        self._prefill_floor: list[float] = [floor[k] for k in inverse.tolist()]
        cfg = self.link_config
        self._transfer: list[float] = [cfg.transfer_seconds(float(k * kv_bytes_per_token)) for k in prompts.tolist()]
        self._prompts = prompts

    def _min_prefill(self, num_tokens: int) -> float:
        seconds = self._prefill_seconds.get(num_tokens)
        if seconds is None:
            seconds = self._prefill_seconds[num_tokens] = float(self._latency.min_prefill_seconds(num_tokens))
        return seconds

    def _current_bound(self, i: int, now: float) -> float:
        """The earliest request ``i``'s K/V can reach a decode replica, as known at ``now``."""
        records = self.handoff.records
        p = self._prefill_of[i]
        if p >= 0 and records.prefill_done[i] == records.prefill_done[i]:  # its prefill's end is known (not NaN)
            prefill_end = records.prefill_done[i]
        elif p < 0:  # not yet routed to a prefill replica
            return max(now, self._arrival_times[i]) + self._prefill_floor[i] + self._transfer[i]
        else:
            replica = self.replicas[p]
            start = max(now, self._arrival_times[i], replica.last_end)  # after its arrival and the step in flight
            request = replica.engine.requests.get(f"r{i}")
            if request is None:  # not yet admitted: the whole prompt is ahead
                prefill_end = start + self._prefill_floor[i]
            else:
                prefill_end = start + self._min_prefill(request.num_tokens - request.num_computed_tokens)
        # Its transfer leaves after its prefill and after the transfers already queued on its link.
        return max(prefill_end, self.handoff.link_of(p).free_at) + self._transfer[i]

    def _make_replica(self, index: int, config: SimConfig, **kw: Any) -> Replica:
        recorder = HandoffRecorder(index, self._request_rows, self._step_rows, self)
        return PrefillReplica(index, config, self.env, self.requests, recorder, cluster=self, **kw)

    def decode_reason(self, request: Request) -> str | None:
        """Why the decode pool could never serve ``request`` (prompt + max_tokens), or None."""
        reason = self.decode_replicas[0].engine.validate(request)
        return None if reason is None else f"decode pool: {reason}"

    def _decode_horizon(self, index: int, now: float) -> float:
        replica = self.decode_replicas[index - self.num_prefill]
        handoff = self.handoff
        bound = handoff.group_of(replica.decode_index).bound(now, handoff.handed)
        if replica.joins and replica.joins[0][0] < bound:
            bound = replica.joins[0][0]
        return bound - now

    def _start(self) -> None:
        for replica in self.decode_replicas:
            self.env.process(self._guard(replica.run()))

    def _summarize(self) -> tuple[pd.Series, pd.DataFrame]:
        n, written = len(self.workload), self._request_sink.num_rows
        handoff = self.handoff
        if written != n or handoff.num_pending or any(r.num_holds for r in self.replicas):
            raise InvariantViolation(
                "no-request-lost",
                f"{written} of {n} requests finished; {handoff.num_pending} still wait for a decode replica, "
                f"{sum(r.num_holds for r in self.replicas)} K/V copies still held by prefill replicas",
            )
        return summarize_disaggregated(self._request_sink.path, self.replicas, self.decode_replicas, handoff)

    def run(self) -> ClusterResult:
        result = super().run()
        result.configs = [*self.configs, *(r.config for r in self.decode_replicas)]
        result.router = f"{self.router_name} (prefill) / {self.decode_router_name} (decode)"
        if self.handoff.holds_skipped:
            result.notes.append(
                f"{self.handoff.holds_skipped} prefills kept no K/V copy while waiting (prefix-cache pages shared)"
            )
        return result


def simulate_disaggregated(
    prefill: SimConfig, decode: SimConfig | None, workload: Workload, **kw: Any
) -> ClusterResult:
    """Run ``workload`` on a disaggregated cluster (``decode`` None: the prefill config); see
    :class:`DisaggregatedSimulator` for the options."""
    return DisaggregatedSimulator(prefill, decode or dataclasses.replace(prefill), workload, **kw).run()
