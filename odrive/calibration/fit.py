"""Fit step time to a profile: non-negative least squares on physically meaningful counts, with its
held-out error (leave-one-grid-point-out and leave-one-compiled-shape-out) and two baselines.

Model: ``exec = c0 + sum_k c_k x_k`` over ``STEP_FEATURES`` (all ``c >= 0``: every count can only add
time), fitted to the per-point *median* (robust on a shared machine) and minimising relative error, then
scaled by ``tail_factor`` = the median over points of mean / median: steps on a shared machine have a heavy
right tail, and a request's latency sums steps, so the simulator needs the mean. Host overhead of the engine
loop ``= h0 + h1 x num_seqs``; a step whose compiled shape differs from the previous step's pays
``switch_penalty_s`` (median over the grid of first-run minus settled time).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from odrive.calibration.features import FEATURE_COLUMNS
from odrive.calibration.profile import Profile
from odrive.calibration.replay_fit import REPLAY_FEATURES, correction_inputs, replay_frame

STEP_FEATURES: tuple[str, ...] = (
    "padded_tokens",  # matmuls, RoPE, KV writes over every padded token row
    "padded_seqs",  # LM head + sampler rows
    "num_seqs",  # per-sequence host work in BatchBuilder
    "kv_tokens",  # KV actually read (distinct pages)
    "decode_kv_slots",  # decode pass: padded rows x trips x block (gathers, masked scores)
    "prefill_kv_slots",  # prefill pass: tiles x trips x q_block x block
    "prefill_blocks",  # prefill pass loop trips (per-iteration overhead)
)
UNPADDED_FEATURES: tuple[str, ...] = ("num_tokens", "num_seqs", "kv_tokens")  # what a BatchShape alone gives
INTERP_FEATURES: tuple[str, ...] = ("padded_tokens", "padded_seqs", "decode_blocks", "prefill_blocks", "kv_tokens")


def nnls(a: np.ndarray, b: np.ndarray, tol: float = 1e-12) -> np.ndarray:
    """min ||a x - b|| subject to x >= 0 (Lawson-Hanson active set)."""
    n = a.shape[1]
    active = np.zeros(n, dtype=bool)
    x = np.zeros(n)
    for _ in range(10 * n):
        grad = a.T @ (b - a @ x)
        if active.all() or np.max(np.where(active, -np.inf, grad)) <= tol:
            break
        active[int(np.argmax(np.where(active, -np.inf, grad)))] = True
        while True:
            z = np.zeros(n)
            z[active] = np.linalg.lstsq(a[:, active], b, rcond=None)[0]
            if (z[active] > 0).all():
                x = z
                break
            bad = active & (z <= 0)
            alpha = np.min(x[bad] / (x[bad] - z[bad]))
            x = x + alpha * (z - x)
            active &= x > tol
    return x


@dataclass(frozen=True)
class LinearFit:
    """``y = intercept + coef . x`` over named features."""

    features: tuple[str, ...]
    intercept: float
    coef: tuple[float, ...]

    @classmethod
    def fit(cls, frame: pd.DataFrame, target: str, features: Sequence[str], relative: bool = True) -> LinearFit:
        x = np.column_stack([np.ones(len(frame))] + [frame[f].to_numpy(np.float64) for f in features])
        y = frame[target].to_numpy(np.float64)
        w = 1.0 / y if relative else np.ones_like(y)
        scale = np.abs(x).max(axis=0)
        scale[scale == 0] = 1.0
        beta = nnls(x / scale * w[:, None], y * w) / scale
        return cls(tuple(features), float(beta[0]), tuple(float(c) for c in beta[1:]))

    def predict(self, frame: pd.DataFrame | np.ndarray, columns: Sequence[str] | None = None) -> np.ndarray:
        """Predict for a frame (columns by name) or a matrix whose columns are ``columns``."""
        if isinstance(frame, pd.DataFrame):
            x = np.column_stack([frame[f].to_numpy(np.float64) for f in self.features]) if self.features else None
        else:
            if columns is None:
                raise ValueError("a feature matrix needs its column names")
            cols = list(columns)
            x = frame[:, [cols.index(f) for f in self.features]] if self.features else None
        n = len(frame)
        return self.intercept + (x @ np.asarray(self.coef) if x is not None else np.zeros(n))

    def to_dict(self) -> dict[str, float]:
        return {"intercept": self.intercept, **dict(zip(self.features, self.coef, strict=True))}


def idw_predict(train: pd.DataFrame, test: pd.DataFrame, target: str, k: int = 4) -> np.ndarray:
    """Baseline grid interpolation: inverse-distance weighting of the ``k`` nearest grid points in
    standardised log-feature space."""
    a = np.log1p(train[list(INTERP_FEATURES)].to_numpy(np.float64))
    b = np.log1p(test[list(INTERP_FEATURES)].to_numpy(np.float64))
    sd = a.std(axis=0)
    sd[sd == 0] = 1.0
    d = np.sqrt((((b[:, None, :] - a[None, :, :]) / sd) ** 2).sum(axis=2))
    y = train[target].to_numpy(np.float64)
    out = np.empty(len(test))
    for i, row in enumerate(d):
        idx = np.argsort(row)[:k]
        w = 1.0 / np.maximum(row[idx], 1e-9) ** 2
        out[i] = np.sum(w * y[idx]) / np.sum(w)
    return out


Predictor = Callable[[pd.DataFrame, pd.DataFrame], np.ndarray]


def held_out_errors(frame: pd.DataFrame, target: str, predictor: Predictor, groups: np.ndarray) -> np.ndarray:
    """Relative error of each row predicted by a model fitted without the row's group."""
    err = np.empty(len(frame))
    for g in np.unique(groups):
        out = groups == g
        err[out] = predictor(frame[~out], frame[out]) / frame[target].to_numpy()[out] - 1.0
    return err


def _stats(err: np.ndarray) -> dict[str, float]:
    a = 100 * np.abs(err)
    return {
        "median_abs_pct": float(np.median(a)),
        "p90_abs_pct": float(np.percentile(a, 90)),
        "max_abs_pct": float(a.max()),
        "mean_pct": float(100 * err.mean()),
    }


def shape_groups(frame: pd.DataFrame) -> np.ndarray:
    """One group per compiled shape and attention trip count: hold out a whole bucket."""
    key = frame[["page_size", "padded_tokens", "padded_seqs", "decode_blocks"]].astype(str).agg("/".join, axis=1)
    return key.to_numpy()


@dataclass
class ProfileFit:
    """The calibrated step-time model of a profile: ``exec`` regression + loop ``overhead`` regression."""

    step: LinearFit
    overhead: LinearFit
    heldout: dict[str, dict[str, float]] = field(default_factory=dict)
    target: str = "exec_s"
    tail_factor: float = 1.0
    switch_penalty_s: float = 0.0
    replay: LinearFit | None = None  # serving-loop correction fitted on replayed steps (odrive.calibration.replay_fit)
    # Swap preemption's copies of one request's pages, per direction: seconds = intercept + c x padded pool rows.
    swap_out: LinearFit | None = None
    swap_in: LinearFit | None = None

    def predict_exec(self, rows: pd.DataFrame | np.ndarray, columns: Sequence[str] | None = None) -> np.ndarray:
        """Mean executor seconds of settled steps (the median fit times ``tail_factor``)."""
        return self.tail_factor * self.step.predict(rows, columns)

    def predict_overhead(self, num_seqs: np.ndarray | float) -> np.ndarray:
        n = np.atleast_1d(np.asarray(num_seqs, dtype=np.float64))
        return self.overhead.predict(pd.DataFrame({"num_seqs": n}))

    def predict_period(
        self, rows: np.ndarray, switched: np.ndarray | bool, host_overhead: bool = True, idle: np.ndarray | bool = False
    ) -> np.ndarray:
        """Seconds of steps with feature ``rows`` (``FEATURE_COLUMNS`` order) in the serving loop: the replay
        correction when fitted (it includes the loop's overhead, switch and wake-up costs; ``idle``: the step
        starts after idleness, also flagged ``switched``), else executor time + switch penalty (+ the loop's
        overhead)."""
        exec_s = self.predict_exec(rows, FEATURE_COLUMNS)
        if self.replay is not None and host_overhead:
            return self.replay.predict(correction_inputs(rows, exec_s, switched, idle), REPLAY_FEATURES)
        t = exec_s + self.switch_penalty_s * np.asarray(switched, dtype=np.float64)
        if host_overhead:
            t = t + self.predict_overhead(rows[:, FEATURE_COLUMNS.index("num_seqs")])
        return t

    def predict_swap(self, rows_out: Sequence[int], rows_in: Sequence[int]) -> float | None:
        """Seconds of one step's swap copies, one request per entry: the padded pool rows it moves to the host
        (``rows_out``) and back (``rows_in``; :func:`odrive.calibration.features.padded_swap_rows`); None when the
        profile measured no swaps."""
        if self.swap_out is None or self.swap_in is None:
            return None
        total = 0.0
        for fit, rows in ((self.swap_out, rows_out), (self.swap_in, rows_in)):
            if len(rows):
                total += float(fit.predict(np.asarray(rows, np.float64)[:, None], ("padded_rows",)).sum())
        return total

    def summary(self) -> dict:
        return {
            "model": "nnls-linear",
            "target": self.target,
            "step_coef": self.step.to_dict(),
            "overhead_coef": self.overhead.to_dict(),
            "tail_factor": self.tail_factor,
            "switch_penalty_s": self.switch_penalty_s,
            "replay_coef": self.replay.to_dict() if self.replay is not None else None,
            "swap_coef": {"out": self.swap_out.to_dict(), "in": self.swap_in.to_dict()}
            if self.swap_out is not None and self.swap_in is not None
            else None,
            "heldout": self.heldout,
        }


def fit_profile(profile: Profile, target: str = "exec_s", cross_validate: bool = True) -> ProfileFit:
    """Fit ``profile``; with ``cross_validate`` also compute held-out errors of the model and baselines."""
    fwd = profile.forward
    step = LinearFit.fit(fwd, target, STEP_FEATURES)
    eng = profile.engine
    overhead = LinearFit.fit(eng, "overhead_s", ("num_seqs",), relative=False) if len(eng) else LinearFit((), 0.0, ())
    tail = float(np.median(fwd["exec_mean_s"] / fwd[target])) if "exec_mean_s" in fwd else 1.0
    penalty = max(0.0, float(np.median(fwd["exec_first_s"] - fwd[target]))) if "exec_first_s" in fwd else 0.0
    fit = ProfileFit(step, overhead, target=target, tail_factor=tail, switch_penalty_s=penalty)
    swaps = profile.swaps
    if len(swaps):
        fit.swap_out, fit.swap_in = (
            LinearFit.fit(swaps[swaps["kind"] == kind], "swap_s", ("padded_rows",)) for kind in ("out", "in")
        )
    replayed = profile.replay.dropna(subset=["period_s"]) if "period_s" in profile.table else profile.replay
    if len(replayed) >= 8:
        frame = replay_frame(replayed, fit.predict_exec(replayed))
        fit.replay = LinearFit.fit(frame, "period_s", REPLAY_FEATURES)
        if cross_validate:
            fit.heldout["replay"] = _replay_heldout(fit, replayed, frame)
    if cross_validate and len(swaps) >= 4:

        def swap_line(tr: pd.DataFrame, te: pd.DataFrame) -> np.ndarray:
            return LinearFit.fit(tr, "swap_s", ("padded_rows",)).predict(te)

        errors = [held_out_errors(part, "swap_s", swap_line, part["num_swap_pages"].to_numpy())
                  for _, part in swaps.groupby("kind")]  # fmt: skip
        fit.heldout["swap_leave_one_size_out"] = _stats(np.concatenate(errors))
    if cross_validate and len(fwd) >= 4:
        points = np.arange(len(fwd))
        shapes = shape_groups(fwd)

        def linear(features: Sequence[str]) -> Predictor:
            return lambda tr, te: LinearFit.fit(tr, target, features).predict(te)

        def interp(tr: pd.DataFrame, te: pd.DataFrame) -> np.ndarray:
            return idw_predict(tr, te, target)

        fit.heldout = {
            **fit.heldout,
            "leave_one_point_out": _stats(held_out_errors(fwd, target, linear(STEP_FEATURES), points)),
            "leave_one_shape_out": _stats(held_out_errors(fwd, target, linear(STEP_FEATURES), shapes)),
            "in_sample": _stats(step.predict(fwd) / fwd[target].to_numpy() - 1.0),
            "baseline_unpadded_linear_point_out": _stats(
                held_out_errors(fwd, target, linear(UNPADDED_FEATURES), points)),
            "baseline_grid_interpolation_point_out": _stats(held_out_errors(fwd, target, interp, points)),
            "baseline_grid_interpolation_shape_out": _stats(held_out_errors(fwd, target, interp, shapes)),
            "num_points": {"forward": float(len(fwd)), "shapes": float(len(np.unique(shapes)))},
        }  # fmt: skip
    return fit


def _replay_heldout(fit: ProfileFit, replayed: pd.DataFrame, frame: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Error on replayed steps (``frame``: their ``replay_frame``): leave-one-replay-out for the correction, and
    the grid model without it."""
    runs = replayed["run"].to_numpy()

    def corrected(tr: pd.DataFrame, te: pd.DataFrame) -> np.ndarray:
        return LinearFit.fit(tr, "period_s", REPLAY_FEATURES).predict(te)

    rows = replayed[list(FEATURE_COLUMNS)].to_numpy(np.float64)
    grid_only = ProfileFit(fit.step, fit.overhead, tail_factor=fit.tail_factor, switch_penalty_s=fit.switch_penalty_s)
    uncorrected = grid_only.predict_period(rows, replayed["switched"].to_numpy(bool)) / frame["period_s"].to_numpy()
    return {
        "leave_one_replay_out": _stats(held_out_errors(frame, "period_s", corrected, runs)),
        "grid_model_only": _stats(uncorrected - 1.0),
        "num_steps": {"replay": float(len(frame)), "runs": float(len(np.unique(runs)))},
    }
