"""Calibrate the step model on the engine's own serving loop: replayed workloads' back-to-back step periods.

The grid (``odrive.profiling.profiler``) times each compiled shape settled and repeated, and the loop's host
overhead apart. Inside the serving loop steps differ systematically — measured on the tiny model, pinned CPU:
single-sequence decode steps ~6 % slower than the grid predicts, steps after a shape switch ~17 % faster than
the grid's first-run penalty implies, prefill steps ~9 % faster. So the profiler also replays a few fixed,
seeded workloads (distinct from any experiment's) through the real engine, and a second non-negative fit maps
the grid's prediction to the measured period of each back-to-back step::

    period = c0 + a_dec * exec * [decode only] + a_pre * exec * [has prefill] + a_sw * [switched]
             + a_idle * [after idle] + a_n * num_seqs

``exec`` is the grid fit's executor time, ``switched`` marks a changed compiled shape or a step after idleness,
``after idle`` a step that starts when the engine had nothing to do (measured: ~1.3 ms more than another shape
switch, whatever the step's size — the host wakes up). The correction replaces the grid's switch penalty and
loop overhead when a profile has replay rows; replay rows without ``after_idle`` (older profiles) fit
``a_idle = 0``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from odrive.profiling.features import FEATURE_COLUMNS, EngineGeometry

if TYPE_CHECKING:
    from odrive.models.checkpoint import Model

REPLAY_FEATURES: tuple[str, ...] = ("exec_decode", "exec_prefill", "switched", "after_idle", "num_seqs")


@dataclass(frozen=True)
class ReplayCalibration:
    """The calibration replays on an FCFS engine with these limits: a closed burst (every request at t=0)
    measures the engine's throughput, then Poisson arrivals at ``loads`` of it (the lowest load gives the steps
    after idleness). Lengths uniform; seeds fixed and far from experiments' seeds."""

    max_prefill_length: int = 256
    max_length: int = 512
    num_pages: int = 160
    max_concurrent_decodes: int = 16
    num_closed: int = 48
    num_open: int = 60
    loads: tuple[float, ...] = (0.2, 0.4, 0.8)
    prompt: tuple[int, int] = (8, 224)
    output: tuple[int, int] = (4, 64)
    seed: int = 30_000


DEFAULT_REPLAY = ReplayCalibration()


def correction_inputs(
    rows: np.ndarray, exec_s: np.ndarray, switched: np.ndarray | bool, idle: np.ndarray | bool = False
) -> np.ndarray:
    """``REPLAY_FEATURES`` columns for feature ``rows`` (``FEATURE_COLUMNS`` order) with grid times ``exec_s``;
    ``switched`` and ``idle`` (after idleness) flag steps, one per row or one for all."""
    prefill = rows[:, FEATURE_COLUMNS.index("num_prefill_seqs")] > 0
    sw = np.broadcast_to(np.asarray(switched, dtype=np.float64), exec_s.shape)
    after_idle = np.broadcast_to(np.asarray(idle, dtype=np.float64), exec_s.shape)
    num_seqs = rows[:, FEATURE_COLUMNS.index("num_seqs")]
    return np.column_stack([exec_s * ~prefill, exec_s * prefill, sw, after_idle, num_seqs])


def replay_frame(rows: pd.DataFrame, exec_s: np.ndarray) -> pd.DataFrame:
    """The replay rows of a profile as a ``REPLAY_FEATURES`` + ``period_s`` frame."""
    idle = rows["after_idle"].fillna(False).to_numpy(bool) if "after_idle" in rows else False
    x = correction_inputs(rows[list(FEATURE_COLUMNS)].to_numpy(np.float64), exec_s, rows["switched"].to_numpy(bool),
                          idle)  # fmt: skip
    frame = pd.DataFrame(x, columns=list(REPLAY_FEATURES))
    frame["period_s"] = rows["period_s"].to_numpy(np.float64)
    return frame


def measure_replays(model: Model, page_size: int, cal: ReplayCalibration = DEFAULT_REPLAY,
                    log: Callable[[str], None] = print) -> pd.DataFrame:  # fmt: skip
    """Replay ``cal``'s workloads on a fresh engine for ``model``; one row per step that ran back to back with
    the next: ``source="replay"``, ``run``, ``page_size``, ``FEATURE_COLUMNS``, ``switched``, ``after_idle``,
    ``period_s``."""
    from odrive.profiling.replay import replay, step_shapes, warm_up
    from odrive.vsurge.driver import vSurge
    from sim.workloads import Uniform, Workload, poisson_workload

    surge = vSurge.create_odriver(
        model=model, max_prefill_length=cal.max_prefill_length, page_size=page_size, max_concurrent_prefill=1,
        max_concurrent_decodes=cal.max_concurrent_decodes, max_length=cal.max_length, num_pages=cal.num_pages,
        seed=0, vsurge_name="replay-calibration",
    )  # fmt: skip
    geometry = EngineGeometry.of_builder(surge.executor.builder)
    warm_up(surge, geometry)
    prompt = Uniform(cal.prompt[0], min(cal.prompt[1], cal.max_prefill_length))
    output = Uniform(*cal.output)
    burst = poisson_workload(1.0, cal.num_closed, prompt, output, seed=cal.seed)
    burst = Workload(np.zeros(len(burst)), burst.prompt_lens, burst.output_lens, name="closed")
    first = replay(surge, burst, seed=cal.seed)
    throughput = len(burst) / first.wall_s
    runs = [first.steps]
    for k, load in enumerate(cal.loads, start=1):
        wl = poisson_workload(load * throughput, cal.num_open, prompt, output, seed=cal.seed + k)
        runs.append(replay(surge, wl, seed=cal.seed + k).steps)
    frames = []
    for run, steps in enumerate(runs):
        features, switched, idle = step_shapes(steps, geometry)
        rows = [f.to_dict() for f in features]
        frame = pd.DataFrame(rows)
        frame.insert(0, "run", run)
        frame.insert(0, "page_size", page_size)
        frame.insert(0, "source", "replay")
        frame["switched"] = switched
        frame["after_idle"] = idle
        frame["period_s"] = steps["period_s"].to_numpy()
        frames.append(frame.dropna(subset=["period_s"]))
    out = pd.concat(frames, ignore_index=True)
    log(
        f"replay calibration: {len(runs)} workloads, {len(out)} back-to-back steps "
        f"(closed burst {throughput:.1f} req/s)"
    )
    return out
