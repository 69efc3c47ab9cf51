"""Prometheus metrics of one served vSurge, fed by the engine itself.

``ServerMetrics.install(surge)`` puts a thin tee in front of ``surge.engine.metrics``: the engine keeps
calling ``on_step``/``on_request_done`` (on the engine thread, under the engine lock), the original
recorder still gets every call, and the tee updates counters, latency histograms and the KV-page and
queue-depth gauges. Latencies are engine-side (from ``submit`` to first token / finish), as the engine's
own ``requests_frame`` reports them. Each instance has its own registry, so several servers can coexist.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pandas as pd
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from odrive.core.engine import Engine
from odrive.core.metrics import MetricsRecorder
from odrive.core.request import FinishReason, Request, RequestStatus
from odrive.vsurge import vSurge

TTFT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
TPOT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
E2E_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


class ServerMetrics:
    """Every metric the server exports, in its own ``CollectorRegistry``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.requests = Counter(
            "odrive_requests", "Requests that ended, by state and finish reason", ["state", "finish_reason"], registry=r
        )
        self.prompt_tokens = Counter("odrive_prompt_tokens", "Prompt tokens of ended requests", registry=r)
        self.generation_tokens = Counter("odrive_generation_tokens", "Generated tokens of ended requests", registry=r)
        self.cached_tokens = Counter(
            "odrive_prefix_cache_hit_tokens", "Prompt tokens served from the prefix cache (ended requests)", registry=r
        )
        self.preemptions = Counter("odrive_preemptions", "Requests preempted by the scheduler", registry=r)
        self.steps = Counter("odrive_engine_steps", "Engine steps executed", registry=r)
        self.ttft = Histogram(
            "odrive_time_to_first_token_seconds",
            "Time from submit to the first token",
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.tpot = Histogram(
            "odrive_time_per_output_token_seconds",
            "Mean time per output token after the first, per request",
            buckets=TPOT_BUCKETS,
            registry=r,
        )
        self.e2e = Histogram(
            "odrive_e2e_request_latency_seconds", "Time from submit to finish", buckets=E2E_BUCKETS, registry=r
        )
        self.pages_used = Gauge("odrive_kv_pages_used", "KV pages held by requests", registry=r)
        self.pages_free = Gauge("odrive_kv_pages_free", "KV pages free", registry=r)
        self.pages_total = Gauge("odrive_kv_pages_total", "Usable KV pages (excluding the null page)", registry=r)
        self.waiting = Gauge("odrive_requests_waiting", "Requests waiting for admission", registry=r)
        self.running = Gauge("odrive_requests_running", "Requests in the running set", registry=r)
        self.http = Counter(
            "odrive_http_requests", "HTTP requests by route and status code", ["path", "status"], registry=r
        )
        self.prefix = PrefixCacheCollector()
        r.register(self.prefix)

    def install(self, surge: vSurge) -> None:
        """Tee ``surge.engine.metrics`` into these metrics (replacing an earlier server's tee)."""
        engine = surge.engine
        inner = engine.metrics.inner if isinstance(engine.metrics, RecorderTee) else engine.metrics
        engine.metrics = RecorderTee(inner, self, engine)  # type: ignore[assignment]
        self.refresh(engine)

    @staticmethod
    def uninstall(surge: vSurge) -> None:
        if isinstance(surge.engine.metrics, RecorderTee):
            surge.engine.metrics = surge.engine.metrics.inner

    def refresh(self, engine: Engine) -> None:
        """Pool and queue gauges from the engine's live state (called under the engine lock)."""
        alloc, sched = engine.allocator, engine.scheduler
        free, total = alloc.num_free_pages, alloc.num_usable_pages
        self.pages_free.set(free)
        self.pages_total.set(total)
        self.pages_used.set(total - free)
        self.waiting.set(len(sched.waiting))
        self.running.set(len(sched.running))
        self.prefix.update(alloc)

    def on_request_done(self, r: Request) -> None:
        reason = r.finish_reason.value if r.finish_reason else "unknown"
        state = "rejected" if r.finish_reason is FinishReason.REJECTED else r.status.value
        self.requests.labels(state=state, finish_reason=reason).inc()
        self.prompt_tokens.inc(r.num_prompt_tokens)
        self.generation_tokens.inc(r.num_output_tokens)
        self.cached_tokens.inc(r.num_cached_tokens)
        if r.status is not RequestStatus.FINISHED or r.finish_time is None:
            return
        self.e2e.observe(r.finish_time - r.arrival_time)
        if r.first_token_time is not None:
            self.ttft.observe(r.first_token_time - r.arrival_time)
            if r.num_output_tokens > 1:
                self.tpot.observe((r.finish_time - r.first_token_time) / (r.num_output_tokens - 1))

    def on_rejected(self) -> None:
        """A request the API refused before it reached the engine (invalid input)."""
        self.requests.labels(state="rejected", finish_reason="rejected").inc()


class RecorderTee(MetricsRecorder):
    """Stands in for the engine's ``MetricsRecorder``: forwards every call, then updates ``ServerMetrics``.
    A subclass, so a compiled engine (``odrive.accel``) accepts it; it keeps no rows of its own."""

    def __init__(self, inner: MetricsRecorder, metrics: ServerMetrics, engine: Engine) -> None:
        super().__init__(record_steps=inner.record_steps)
        self.inner = inner
        self._metrics = metrics
        self._engine = engine
        self._step_signature = inspect.signature(inner.on_step)

    def on_step(self, *args: Any, **kwargs: Any) -> None:
        self.inner.on_step(*args, **kwargs)
        step = self._step_signature.bind(*args, **kwargs).arguments
        m = self._metrics
        m.steps.inc(step.get("num_steps", 1))
        m.preemptions.inc(step.get("num_preempted", 0))
        m.refresh(self._engine)

    def on_request_done(self, r: Request) -> None:
        self.inner.on_request_done(r)
        self._metrics.on_request_done(r)
        self._metrics.refresh(self._engine)

    @property
    def num_done(self) -> int:
        return self.inner.num_done

    def requests_frame(self) -> pd.DataFrame:
        return self.inner.requests_frame()

    def steps_frame(self) -> pd.DataFrame:
        return self.inner.steps_frame()

    def __getattr__(self, name: str) -> Any:  # anything else a recorder subclass adds
        return getattr(self.inner, name)


class PrefixCacheCollector(Collector):
    """``odrive_prefix_cache_hit_rate`` and ``odrive_prefix_cache_stat{field}`` from the allocator's
    ``prefix_stats()``, when it has one (a dataclass, object or mapping of numbers); nothing otherwise."""

    def __init__(self) -> None:
        self._stats: dict[str, float] = {}

    def update(self, allocator: object) -> None:
        probe: Callable[[], object] | None = getattr(allocator, "prefix_stats", None)
        if callable(probe):
            self._stats = _numeric_fields(probe())

    def collect(self) -> Iterator[GaugeMetricFamily]:
        stats = dict(self._stats)
        if not stats:
            return
        rate = _hit_rate(stats)
        if rate is not None:
            yield GaugeMetricFamily("odrive_prefix_cache_hit_rate", "Prefix-cache hit rate (allocator)", rate)
        family = GaugeMetricFamily(
            "odrive_prefix_cache_stat", "The allocator's prefix_stats() fields", labels=["field"]
        )
        for key, value in sorted(stats.items()):
            family.add_metric([key], value)
        yield family


def _numeric_fields(stats: object) -> dict[str, float]:
    if isinstance(stats, Mapping):
        items = stats.items()
    else:
        names = [n for n in dir(stats) if not n.startswith("_")]
        items = ((n, getattr(stats, n, None)) for n in names)
    out = {}
    for key, value in items:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            continue
        out[str(key)] = float(value)
    return out


def _hit_rate(stats: Mapping[str, float]) -> float | None:
    for key in ("hit_rate", "token_hit_rate"):
        if key in stats:
            return stats[key]
    for hits, total in (("hits", "queries"), ("hit_tokens", "query_tokens"), ("hit_tokens", "queried_tokens")):
        if hits in stats and stats.get(total):
            return stats[hits] / stats[total]
    if "hits" in stats and "misses" in stats and stats["hits"] + stats["misses"] > 0:
        return stats["hits"] / (stats["hits"] + stats["misses"])
    return None


class HTTPMetricsMiddleware:
    """Counts HTTP requests by route (unknown paths as ``other``) and response status (pure ASGI, so
    streaming responses and client disconnects pass through untouched)."""

    def __init__(self, app: ASGIApp, counter: Counter, paths: frozenset[str]) -> None:
        self.app, self.counter, self.paths = app, counter, paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            path = scope["path"] if scope["path"] in self.paths else "other"
            self.counter.labels(path=path, status=str(status)).inc()
