"""Many replicas behind a global router on one simpy clock, with streamed per-request metrics."""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import simpy
from tqdm.auto import tqdm

from odrive.core.latency_histogram import LatencyHistogram
from sim.cluster.recorder import REQUEST_DTYPES, RowBuffer, StreamingRecorder
from sim.cluster.replica import Replica
from sim.cluster.routers import Arrivals, Router, make_router
from sim.cluster.routers.base import check_choice, replicas_of
from sim.cluster.summary import summarize_cluster
from sim.cluster.table_sink import TableSink, default_format, read_table
from sim.cluster.views import ClusterViews
from sim.cluster.workloads import prefix_keys_from_tokens
from sim.config import SimConfig
from sim.simulator import WorkloadRequests
from sim.workloads.request import Workload

HORIZONS = ("lookahead", "conservative")


@dataclass
class ClusterResult:
    """Where the tables went, the cluster and per-replica summaries, and how the run went."""

    configs: list[SimConfig]
    router: str
    requests_path: Path
    steps_path: Path | None
    summary: pd.Series
    replicas: pd.DataFrame  # one row per replica: its summary plus num_pages, free_pages_at_end
    wall_time_s: float
    routed_ahead: bool
    notes: list[str] = field(default_factory=list)
    _tmp: Any = field(default=None, repr=False)  # keeps a temporary out_dir alive as long as the result
    itl: LatencyHistogram | None = field(default=None, repr=False)  # every replica's inter-token latencies

    def requests(self, columns: list[str] | None = None) -> pd.DataFrame:
        """The per-request table (read back from disk; pass ``columns`` to bound memory)."""
        return read_table(self.requests_path, columns)

    def steps(self) -> pd.DataFrame:
        if self.steps_path is None:
            raise ValueError("steps were not recorded; run with record_steps=True")
        return read_table(self.steps_path)


def expand_configs(configs: SimConfig | Sequence[SimConfig], num_replicas: int | None) -> list[SimConfig]:
    """One config per replica: a single config is repeated ``num_replicas`` times."""
    if isinstance(configs, SimConfig):
        return [configs] * (num_replicas or 1)
    configs = list(configs)
    if not configs:
        raise ValueError("a cluster needs at least one replica config")
    if num_replicas is not None and num_replicas != len(configs):
        if len(configs) != 1:
            raise ValueError(f"{len(configs)} replica configs given for {num_replicas} replicas")
        return configs * num_replicas
    return configs


class ClusterSimulator:
    """Replays ``workload`` on replicas built from ``configs`` behind ``router``; deterministic per seed.

    ``horizon="lookahead"`` lets each replica fast-forward decode runs up to the first arrival that could
    be routed to it (its own next arrival for state-independent routers, which are routed ahead;
    :meth:`Router.first_possible` otherwise); ``"conservative"`` routes every request at its arrival time
    and bounds every replica by the cluster's next arrival. Both give the same results.
    Request rows (and step rows if ``record_steps``; each ``SimConfig.record_steps`` is ignored) stream to
    ``out_dir`` (default: a temporary folder kept as long as the result) in chunks of ``chunk_rows``.
    A router that keys on prefixes (``prefix-affinity``) gets ``prefix_keys`` if given, else a hash of each
    prompt's first ``affinity_tokens`` token ids when the workload carries them.
    """

    def __init__(
        self,
        configs: SimConfig | Sequence[SimConfig],
        workload: Workload,
        router: str | Router = "round-robin",
        *,
        num_replicas: int | None = None,
        prefix_keys: np.ndarray | None = None,
        affinity_tokens: int = 64,
        seed: int = 0,
        horizon: str = "lookahead",
        out_dir: str | Path | None = None,
        table_format: str | None = None,
        record_steps: bool = False,
        chunk_rows: int = 1 << 16,
        progress: bool = False,
    ) -> None:
        if horizon not in HORIZONS:
            raise ValueError(f"horizon must be one of {HORIZONS}, got {horizon!r}")
        self.configs = expand_configs(configs, num_replicas)
        n = len(self.configs)
        self.workload = workload
        self.requests = WorkloadRequests(workload)  # the replicas' requests, read once for all of them
        self.router = make_router(router, n, seed) if isinstance(router, str) else router
        self.router_name = router if isinstance(router, str) else type(router).__name__
        if self.router.num_replicas != n:
            raise ValueError(f"router built for {self.router.num_replicas} replicas, cluster has {n}")
        if prefix_keys is not None and len(prefix_keys) != len(workload):
            raise ValueError(f"prefix_keys has {len(prefix_keys)} entries for {len(workload)} requests")
        if prefix_keys is None and self.router.uses_prefix_keys and workload.prompt_token_ids is not None:
            prefix_keys = prefix_keys_from_tokens(workload.prompt_token_ids, affinity_tokens)
        self.router.prepare(Arrivals(workload.arrival_times, workload.prompt_lens, prefix_keys))
        self.horizon = horizon
        self.progress = progress
        self._tmp = None
        if out_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="odrive-cluster-")
            out_dir = self._tmp.name
        self.out_dir = Path(out_dir)
        ext = table_format or default_format()
        self._request_sink = TableSink(self.out_dir / f"requests.{ext}", {**REQUEST_DTYPES, **self.EXTRA_COLUMNS})
        self._step_sink = TableSink(self.out_dir / f"steps.{ext}", {"replica": "int32"}) if record_steps else None
        self._request_rows = RowBuffer(self._request_sink, "requests", chunk_rows, tuple(self.EXTRA_COLUMNS))
        self._step_rows = RowBuffer(self._step_sink, "steps", chunk_rows) if self._step_sink else None

        self.env = simpy.Environment()
        self._times = workload.arrival_times
        self._next = 0  # first request not yet routed
        self._all_closed = False
        self._error: BaseException | None = None
        plan = self.router.plan() if horizon == "lookahead" else None
        self.routed_ahead = plan is not None
        own = None
        if plan is not None:
            plan = np.asarray(plan, dtype=np.int64)
            if plan.shape != (len(workload),) or (len(plan) and not (0 <= plan.min() and plan.max() < n)):
                raise ValueError(f"router {self.router!r} planned an invalid assignment")
            own = replicas_of(plan, n)
        self.views = ClusterViews(n)
        self.itl = LatencyHistogram()  # one for all replicas' recorders
        self.replicas = [
            self._make_replica(
                r, cfg,
                own=None if own is None else own[r],
                horizon_fn=None if own is not None else self._horizon,
                before_step=None if own is not None else self.route_until,
                views=None if own is not None else self.views,
            )
            for r, cfg in enumerate(self.configs)
        ]  # fmt: skip
        if own is not None:
            for r, replica in zip(own, self.replicas, strict=True):
                replica.num_routed = len(r)
        self.views.allocators = [r.engine.allocator for r in self.replicas]

    EXTRA_COLUMNS: dict[str, str] = {}
    """Columns (name: dtype) a subclass appends to every request row, after the core ones."""

    def _make_replica(self, index: int, config: SimConfig, **kw: Any) -> Replica:
        """Replica ``index`` of the pool arrivals are routed to (``kw``: its routing mode, see :class:`Replica`)."""
        recorder = StreamingRecorder(index, self._request_rows, self._step_rows, itl=self.itl)
        return Replica(index, config, self.env, self.requests, recorder, **kw)

    def _start(self) -> None:
        """Start processes beyond the replicas' (a subclass's); called once by :meth:`run`."""
        return None

    def _summarize(self) -> tuple[pd.Series, pd.DataFrame]:
        """The cluster summary and per-replica rows, from the written requests table."""
        return summarize_cluster(self._request_sink.path, self.replicas, self.router)

    # --- routing --------------------------------------------------------------------------------
    def route_until(self, now: float) -> None:
        """Route every request arriving at or before ``now`` (each with the views at its arrival time)."""
        times, replicas, route = self._times, self.replicas, self.router.route
        n, name = len(times), type(self.router).__name__
        while self._next < n and times[self._next] <= now:
            i = self._next
            self._next += 1
            replicas[check_choice(route(i, self.views, float(times[i])), len(replicas), name)].deliver(i)
        if self._next >= n and not self._all_closed:
            self._all_closed = True
            for replica in replicas:
                replica.close()

    def _horizon(self, replica: int, now: float) -> float:
        nxt = self._next
        if nxt >= len(self._times):
            return math.inf
        if self.horizon == "lookahead":
            nxt = self.router.first_possible(replica, nxt, self.views, now)
            if nxt >= len(self._times):
                return math.inf
        return float(self._times[nxt]) - now

    # --- processes --------------------------------------------------------------------------------
    def _arrivals(self):  # simpy process: routes requests at their arrival times
        times, env = self._times, self.env
        while self._next < len(times):
            t = float(times[self._next])
            if t > env.now:
                yield env.timeout(t - env.now)
            self.route_until(env.now)
        self.route_until(math.inf)

    def _guard(self, process):
        # simpy re-raises a failed process's exception as ``type(err)(*err.args)``; keep the original.
        try:
            yield from process
        except Exception as err:
            self._error = err

    def run(self) -> ClusterResult:
        t0 = time.perf_counter()
        bar = tqdm(total=len(self.workload), unit="req", desc="simulating", disable=not self.progress)
        if self.progress:
            self._request_rows.on_flush = bar.update
        with bar:
            if not self.routed_ahead:
                self.env.process(self._guard(self._arrivals()))
            for replica in self.replicas:
                self.env.process(self._guard(replica.run()))
            self._start()
            self.env.run()
            if self._error is not None:
                raise self._error
            self._request_rows.flush()
            bar.update(len(self.workload) - bar.n)
        if self._step_rows is not None:
            self._step_rows.flush()
        self._request_sink.close()
        if self._step_sink is not None:
            self._step_sink.close()
        sim_wall = time.perf_counter() - t0
        summary, per_replica = self._summarize()
        summary["wall_time_s"] = sim_wall
        summary["simulated_requests_per_wall_s"] = len(self.workload) / sim_wall if sim_wall > 0 else math.nan
        return ClusterResult(
            self.configs, self.router_name, self._request_sink.path,
            self._step_sink.path if self._step_sink else None, summary, per_replica, sim_wall,
            self.routed_ahead, list(self.router.notes), self._tmp, self.itl,
        )  # fmt: skip


def simulate_cluster(
    configs: SimConfig | Sequence[SimConfig], workload: Workload, router: str | Router = "round-robin", **kw: Any
) -> ClusterResult:
    """Run ``workload`` on a cluster; see :class:`ClusterSimulator` for the options."""
    return ClusterSimulator(configs, workload, router, **kw).run()
