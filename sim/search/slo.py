"""Latency service-level objectives: bounds on a run's percentiles, or per-request bounds met by a share of requests."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from odrive.errors import ConfigError

METRICS = ("ttft", "tpot", "e2e")
STATISTICS = ("p50", "p90", "p99", "mean")


@dataclass(frozen=True)
class SLO:
    """``bounds``: ``(name, seconds)`` pairs. With ``attainment`` None each name is a summary statistic (``ttft_p99``:
    the 99th percentile of finished requests' TTFT must not exceed its bound); with ``attainment`` (e.g. 0.9) each
    name is a per-request metric (``ttft``, ``tpot``, ``e2e``) and that share of all requests must meet every bound
    (DistServe's SLO attainment; a rejected request meets none; a one-token request has no TPOT to bound)."""

    bounds: tuple[tuple[str, float], ...]
    attainment: float | None = None

    def __post_init__(self) -> None:
        if not self.bounds:
            raise ConfigError("an SLO needs at least one bound, e.g. ttft_p99=500,tpot_p99=50 (milliseconds)")
        if self.attainment is not None and not 0 < self.attainment <= 1:
            raise ConfigError(f"SLO attainment must be in (0, 1], got {self.attainment}")
        for name, seconds in self.bounds:
            valid = METRICS if self.attainment is not None else [f"{m}_{s}" for m in METRICS for s in STATISTICS]
            if name not in valid:
                kind = "per-request metric" if self.attainment is not None else "statistic"
                raise ConfigError(f"unknown SLO {kind} {name!r}; one of {', '.join(valid)}")
            if not seconds > 0 or math.isinf(seconds):
                raise ConfigError(f"SLO bound {name} must be a positive number of milliseconds, got {seconds * 1e3}")

    @classmethod
    def parse(cls, text: str, attainment: float | None = None) -> SLO:
        """``"ttft_p99=500,tpot_p99=50"`` (milliseconds)."""
        bounds = []
        for item in filter(None, (part.strip() for part in text.split(","))):
            name, sep, value = item.partition("=")
            try:
                bounds.append((name.strip(), float(value) / 1e3))
            except ValueError:
                sep = ""
            if not sep:
                raise ConfigError(f"--slo: expected NAME=MILLISECONDS, got {item!r}")
        return cls(tuple(bounds), attainment)

    def describe(self) -> str:
        text = ", ".join(f"{name} <= {seconds * 1e3:g} ms" for name, seconds in self.bounds)
        return text if self.attainment is None else f"{self.attainment:.0%} of requests with {text}"

    def attained(self, requests: pd.DataFrame) -> float:
        """The share of all requests that finished meeting every per-request bound."""
        if not len(requests):
            return math.nan
        ok = np.array(requests["status"] == "finished", dtype=bool)
        for name, seconds in self.bounds:
            values = requests[name].to_numpy(dtype=np.float64)
            ok &= (values <= seconds) | (np.isnan(values) & (name == "tpot"))
        return float(ok.mean())

    def check(self, summary: pd.Series, requests: pd.DataFrame | None = None) -> tuple[bool, dict[str, float]]:
        """Whether a run meets the SLO, and the numbers that decided it."""
        if self.attainment is None:
            values = {name: float(summary.get(name, math.nan)) for name, _ in self.bounds}
            return all(values[name] <= seconds for name, seconds in self.bounds), values  # NaN never meets
        if requests is None:
            raise ValueError("a per-request SLO needs the requests table")
        share = self.attained(requests)
        return share >= self.attainment, {"attainment": share}
