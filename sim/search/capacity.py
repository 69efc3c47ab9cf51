"""Capacity of one cluster configuration: the highest arrival rate at which its runs still meet an SLO.

The workload is replayed at each rate by scaling its arrival times (the arrival pattern's shape and every request's
prompt and output length are kept; only the clock changes). The search doubles or halves a start rate until one
rate meets the SLO and another does not, then bisects geometrically until the failing rate is within
``tolerance`` of the meeting one: the answer meets the SLO and ``(1 + tolerance) ×`` it did not. A run's
percentiles are those of the workload's requests, so they depend on its size; simulate enough requests for the
percentile asked (a p99 of 100 requests is their maximum).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from odrive.errors import ConfigError
from sim.cluster.spec import ClusterSpec
from sim.search.slo import SLO
from sim.sweep.cache import ResultCache, document_key, spec_files
from sim.workloads import parse_workload
from sim.workloads.request import Workload

REPORTED = ("ttft_p50", "ttft_p99", "tpot_p50", "tpot_p99", "e2e_p99", "request_throughput", "finished", "rejected")


def native_rate(workload: Workload) -> float:
    """Mean arrival rate of ``workload``: requests after the first over the span of their arrivals."""
    times = workload.arrival_times
    span = float(times[-1] - times[0]) if len(times) else 0.0
    if len(times) < 2 or span <= 0:
        raise ConfigError("a capacity search needs a workload of >= 2 requests arriving over time")
    return (len(times) - 1) / span


def at_rate(workload: Workload, rate: float) -> Workload:
    """``workload`` with its arrivals compressed or stretched to a mean of ``rate`` requests per second."""
    if not rate > 0:
        raise ValueError(f"rate must be > 0, got {rate}")
    times = workload.arrival_times
    scaled = (times - times[0]) * (native_rate(workload) / rate)
    return dataclasses.replace(workload, arrival_times=scaled, name=f"{workload.name}@{rate:.6g}/s")


@dataclass(frozen=True)
class SearchSettings:
    """``tolerance``: the failing rate ends within ``1 + tolerance`` of the meeting one. ``start_rate``: the first
    rate tried (default: 1 request/s per accelerator). Rates outside ``[min_rate, max_rate]`` are not tried: below
    ``min_rate`` the capacity is reported as 0, above ``max_rate`` as ``max_rate`` (with ``fails_at`` infinite)."""

    tolerance: float = 0.05
    start_rate: float | None = None
    min_rate: float = 1e-3
    max_rate: float = 1e5

    def __post_init__(self) -> None:
        if not 0 < self.tolerance < 1:
            raise ConfigError(f"tolerance must be in (0, 1), got {self.tolerance}")
        if not 0 < self.min_rate < self.max_rate:
            raise ConfigError(f"need 0 < min_rate < max_rate, got {self.min_rate} and {self.max_rate}")


@dataclass
class Evaluation:
    """One simulated rate: whether it met the SLO and the numbers."""

    rate: float
    met: bool
    metrics: dict[str, float]


@dataclass
class Capacity:
    """The search's answer: ``capacity`` met the SLO, ``fails_at`` (at most ``(1 + tolerance) × capacity``) did not."""

    capacity: float
    fails_at: float
    evaluations: list[Evaluation] = field(default_factory=list)

    def at_capacity(self) -> dict[str, float]:
        """The metrics of the run at the capacity rate (empty if none met the SLO)."""
        for e in self.evaluations:
            if e.rate == self.capacity and e.met:
                return e.metrics
        return {}


class Evaluator:
    """Simulates ``spec`` on ``workload`` at a rate and checks ``slo``; every run is cached (when ``cache`` is given)
    under a key of the cluster, the workload spec (and the files it names), the seed, the rate, the SLO and the code
    version."""

    def __init__(
        self, spec: ClusterSpec, workload_spec: str, slo: SLO, *, seed: int = 0, cache: ResultCache | None = None,
        version: str = "", workload: Workload | None = None,
    ) -> None:  # fmt: skip
        self.spec, self.workload_spec, self.slo, self.seed = spec, workload_spec, slo, seed
        self.cache, self.version = cache, version
        self._workload = workload
        self.simulated = 0  # runs not found in the cache

    @property
    def workload(self) -> Workload:
        if self._workload is None:
            self._workload = parse_workload(self.workload_spec, seed=self.seed)
        return self._workload

    def key(self, rate: float) -> str:
        return document_key({
            "spec": dataclasses.asdict(self.spec), "workload": self.workload_spec,
            "files": spec_files(self.workload_spec), "seed": self.seed, "rate": repr(float(rate)),
            "slo": dataclasses.asdict(self.slo), "code": self.version,
        })  # fmt: skip

    def __call__(self, rate: float) -> Evaluation:
        key = self.key(rate)
        row = self.cache.get(key) if self.cache is not None else None
        if row is None:
            result = self.spec.simulate(at_rate(self.workload, rate), seed=self.seed)
            requests = None
            if self.slo.attainment is not None:
                requests = result.requests(["status", *(name for name, _ in self.slo.bounds)])
            met, decided = self.slo.check(result.summary, requests)
            metrics = {k: float(result.summary[k]) for k in REPORTED if k in result.summary} | decided
            row = {"met": bool(met), "metrics": metrics}
            self.simulated += 1
            if self.cache is not None:
                self.cache.put(key, row)
        return Evaluation(float(rate), bool(row["met"]), {k: float(v) for k, v in row["metrics"].items()})


def find_capacity(evaluate: Any, settings: SearchSettings, start_rate: float) -> Capacity:
    """Bracket then bisect (geometrically) the highest rate ``evaluate(rate).met`` holds for."""
    evaluations: list[Evaluation] = []

    def meets(rate: float) -> bool:
        evaluation = evaluate(rate)
        evaluations.append(evaluation)
        return evaluation.met

    rate = min(max(settings.start_rate or start_rate, settings.min_rate), settings.max_rate)
    lo = hi = math.nan
    if meets(rate):
        lo = rate
        while math.isnan(hi):
            if lo >= settings.max_rate:
                return Capacity(lo, math.inf, evaluations)
            rate = min(2 * lo, settings.max_rate)
            if meets(rate):
                lo = rate
            else:
                hi = rate
    else:
        hi = rate
        while math.isnan(lo):
            if hi <= settings.min_rate:
                return Capacity(0.0, hi, evaluations)
            rate = max(hi / 2, settings.min_rate)
            if meets(rate):
                lo = rate
            else:
                hi = rate
    while hi / lo > 1 + settings.tolerance:
        mid = math.sqrt(lo * hi)
        if meets(mid):
            lo = mid
        else:
            hi = mid
    return Capacity(lo, hi, evaluations)


def search_capacity(
    spec: ClusterSpec, workload_spec: str, slo: SLO, settings: SearchSettings, *, seed: int = 0,
    cache_dir: str | Path | None = None, version: str = "",
) -> tuple[Capacity, int]:  # fmt: skip
    """:func:`find_capacity` of one configuration (runs cached under ``cache_dir``): its capacity and the number of
    runs simulated (not found in the cache)."""
    cache = ResultCache(cache_dir) if cache_dir is not None else None
    evaluate = Evaluator(spec, workload_spec, slo, seed=seed, cache=cache, version=version)
    capacity = find_capacity(evaluate, settings, start_rate=float(spec.accelerators))
    return capacity, evaluate.simulated
