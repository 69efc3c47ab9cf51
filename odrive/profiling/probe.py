"""How fast is the machine right now, relative to its profile? A short real run of a fixed mini workload.

A shared machine's speed drifts with other users' load, and its CPU share depends on what the engine just did
(long stretches of one shape vs. prefills between decodes, idle gaps). The probe replays a fixed small Poisson
workload (not the one being validated) on the real engine and compares its measured step periods with the
calibrated model's prediction for exactly those batches: ``speed = sum(measured) / sum(predicted)``, over all
steps, over decode-only steps (``decode_speed``) and over steps with a prefill chunk (``prefill_speed``). The
two kinds need not drift alike: compute-bound prefill matmuls and overhead-bound small decode steps load a
machine differently (on this 2-core machine the prefills of one session ran ~8 % further from the profile
than its decode steps). ``CalibratedLatencyModel.with_speed(decode_speed, prefill_speed)`` applies both.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from odrive.calibration.features import EngineGeometry, parse_lens
from odrive.profiling.replay import replay, step_shapes
from odrive.vsurge.driver import vSurge
from sim.latency.calibrated import CalibratedLatencyModel
from sim.workloads import Uniform, Workload, poisson_workload


@dataclass(frozen=True)
class SpeedProbe:
    """Measured / predicted total period of the probe run's back-to-back steps: all of them (``speed``), the
    decode-only ones (``decode_speed``) and those with a prefill chunk (``prefill_speed``)."""

    speed: float
    num_steps: int
    seconds: float
    decode_speed: float = 1.0
    prefill_speed: float = 1.0


def predict_steps(steps: pd.DataFrame, model: CalibratedLatencyModel, geometry: EngineGeometry) -> pd.DataFrame:
    """A real run's own batches (``ReplayResult.steps``): the model's step time at speed 1, with the switch
    penalty when the compiled shape changed or the engine was idle (as the simulator charges it)."""
    steps = steps.copy()
    features, switched, idle = step_shapes(steps, geometry)
    unit = model.with_speed(1.0) if (model.speed, model.prefill_speed) != (1.0, 1.0) else model
    predicted = [unit.time_of(f, sw, i) if f else 0.0 for f, sw, i in zip(features, switched, idle, strict=True)]
    if "swap_out" in steps:  # the copies before a step run first (modeled as the profile measured them)
        predicted = [
            t + (unit.swap_time(parse_lens(out), parse_lens(back)) or 0.0) if out or back else t
            for t, out, back in zip(predicted, steps["swap_out"].fillna(""), steps["swap_in"].fillna(""), strict=True)
        ]
    steps["predicted_s"], steps["switched"] = predicted, switched
    return steps


def speed_of(steps: pd.DataFrame, kind: str = "all") -> float:
    """Measured over predicted time of the back-to-back steps of :func:`predict_steps` output: ``kind`` "all",
    "decode" (decode-only steps) or "prefill" (steps with a prefill chunk); 1.0 when there is no such step."""
    s = steps.dropna(subset=["period_s"])
    if kind != "all":
        if kind not in ("decode", "prefill"):
            raise ValueError(f"kind must be 'all', 'decode' or 'prefill', got {kind!r}")
        s = s[(s["num_prefill_seqs"] > 0) == (kind == "prefill")]
    return float(s["period_s"].sum() / s["predicted_s"].sum()) if len(s) else 1.0


def probe_workload(max_prompt: int, seed: int = 0, rate: float = 25.0, n: int = 16) -> Workload:
    return poisson_workload(rate, n, Uniform(16, min(128, max_prompt)), Uniform(8, 24), seed=10_000 + seed)


def measure_speed(
    surge: vSurge,
    model: CalibratedLatencyModel,
    geometry: EngineGeometry,
    *,
    seed: int = 0,
    workload: Workload | None = None,
) -> SpeedProbe:
    """Replay the probe workload on ``surge`` (idle, warmed) and return its speed relative to ``model``."""
    t0 = time.perf_counter()
    wl = workload or probe_workload(surge.engine.scheduler.config.max_prefill_length, seed)
    steps = predict_steps(replay(surge, wl, seed=seed).steps, model, geometry)
    return SpeedProbe(
        speed_of(steps),
        int(steps["period_s"].notna().sum()),
        time.perf_counter() - t0,
        decode_speed=speed_of(steps, "decode"),
        prefill_speed=speed_of(steps, "prefill"),
    )


def geometric_mean(*speeds: float) -> float:
    return float(np.exp(np.mean(np.log(speeds))))
