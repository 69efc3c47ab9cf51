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

from dataclasses import dataclass

import numpy as np
import pandas as pd

from odrive.calibration.features import FEATURE_COLUMNS

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
