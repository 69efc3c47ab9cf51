"""A latency model calibrated from a profile of the real engine (``odrive profile``).

``step time = speed x (exec(features) [+ switch penalty] + loop overhead(num_seqs))``: ``exec`` is a
non-negative linear fit to the profile's settled step medians times its measured mean/median tail factor,
``overhead`` the engine loop's measured cost outside the executor (:mod:`odrive.calibration.fit`). The features
reproduce what the real step computes: ``BatchBuilder``'s token and sequence buckets and the blocked attention
kernel's loop trips (:mod:`odrive.calibration.features`). ``speed`` (default 1: the machine as profiled) scales
everything, e.g. by a load factor measured on a shared machine; ``prefill_speed`` (default: ``speed``) replaces
it for steps that compute a prefill chunk: a machine's speed need not drift alike for compute-bound prefill
matmuls and overhead-bound decode steps (:mod:`odrive.profiling.probe` measures both).

Two ways in:

- :meth:`CalibratedLatencyModel.step_time_chunks` / :class:`CalibratedSimExecutor` (the executor the simulator
  builds for this model: :meth:`CalibratedLatencyModel.make_executor`): from the batch's per-sequence lengths —
  exact features (the kernel's decode cost follows the *longest* context); the executor also charges the
  measured switch penalty when the compiled shape changes or the engine idled.
- :meth:`CalibratedLatencyModel.step_time` (the :class:`BatchShape` interface the stock ``SimExecutor`` uses): a
  ``BatchShape`` only carries sums, so decode contexts are taken as equal (their mean) and prefill chunks as
  equal shares; buckets default to powers of two (the real engine's, for power-of-two limits).

The accelerator passed by the registry is ignored: the profile *is* the device.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from odrive.calibration.features import (
    FEATURE_COLUMNS,
    EngineGeometry,
    StepFeatures,
    decode_run_features,
    padded_swap_rows,
    step_features,
)
from odrive.calibration.fit import ProfileFit, fit_profile
from odrive.calibration.profile import Profile, find_profile
from odrive.core.buckets import power_of_two_buckets
from odrive.core.executor import ExecuteResult, Executor, SeqChunk, SwapOps
from odrive.errors import ConfigError
from odrive.schedulers.config import SchedulerConfig
from sim.hardware import Accelerator
from sim.host_swap import HostSwap
from sim.latency.base import LatencyModel, check_decode_run
from sim.latency.batch_shape import BatchShape
from sim.latency.executor_setup import NO_SETUP, ExecutorSetup
from sim.latency.registry import register_latency_model
from sim.model_spec import ModelSpec

_PREFILL_SEQS = FEATURE_COLUMNS.index("num_prefill_seqs")
_SPEC_TO_HF = {
    "num_layers": "num_hidden_layers", "hidden_size": "hidden_size", "num_q_heads": "num_attention_heads",
    "num_kv_heads": "num_key_value_heads", "head_dim": "head_dim", "intermediate_size": "intermediate_size",
    "vocab_size": "vocab_size",
}  # fmt: skip


def generic_geometry(page_size: int, max_length: int = 1 << 16) -> EngineGeometry:
    """Power-of-two token (from 8) and sequence (from 1) buckets: the real engine's for power-of-two limits."""
    return EngineGeometry(
        page_size, power_of_two_buckets(1 << 20), power_of_two_buckets(1 << 16, smallest=1), -(-max_length // page_size)
    )


class CalibratedLatencyModel(LatencyModel):
    """Step times predicted from a measured profile.

    ``geometry``: the target engine's buckets for the ``BatchShape`` path (default :func:`generic_geometry`
    of ``page_size``, itself defaulting to the profile's first page size). ``speed``: a factor on every
    time (1 = the machine as profiled; >1 = slower, e.g. a measured load factor); ``prefill_speed``: the
    factor for steps with a prefill chunk instead (default: ``speed``). ``host_overhead``: add the engine
    loop's measured overhead (scheduling, bookkeeping) to the executor time.
    """

    def __init__(
        self,
        profile: Profile | str | Path,
        *,
        geometry: EngineGeometry | None = None,
        page_size: int | None = None,
        speed: float = 1.0,
        prefill_speed: float | None = None,
        host_overhead: bool = True,
        switch_penalty: bool = True,
        fit: ProfileFit | None = None,
    ) -> None:
        self.profile = profile if isinstance(profile, Profile) else Profile.load(profile)
        for name, value in (("speed", speed), ("prefill_speed", speed if prefill_speed is None else prefill_speed)):
            if not (isinstance(value, int | float | np.floating) and np.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        self.fit = fit or fit_profile(self.profile, cross_validate=False)
        if fit is None:
            _warn_if_tiled_otherwise(self.profile)
        self.page_size = page_size or int(self.profile.meta["page_sizes"][0])
        self.geometry = geometry or generic_geometry(self.page_size)
        self.speed = float(speed)
        self.prefill_speed = self.speed if prefill_speed is None else float(prefill_speed)
        self.host_overhead = host_overhead
        self.switch_penalty = switch_penalty
        self.switch_penalty_s = self.fit.switch_penalty_s if switch_penalty else 0.0

    # --- core -------------------------------------------------------------------------------------
    def time_of_rows(
        self, rows: np.ndarray, switched: np.ndarray | bool = False, idle: np.ndarray | bool = False
    ) -> np.ndarray:
        """Seconds for feature rows (``FEATURE_COLUMNS`` order, shape ``[n, len(FEATURE_COLUMNS)]``); rows
        flagged ``switched`` (compiled shape differs from the previous step's, or the engine idled) pay the
        switch cost, rows flagged ``idle`` (the engine idled; also ``switched``) the wake-up cost."""
        if not self.switch_penalty:
            switched = idle = 0.0
        period = self.fit.predict_period(rows, switched, self.host_overhead, idle)
        if self.prefill_speed == self.speed:
            return self.speed * period
        with_prefill = rows[:, _PREFILL_SEQS] > 0
        return np.where(with_prefill, self.prefill_speed, self.speed) * period

    def time_of(self, features: StepFeatures, switched: bool = False, idle: bool = False) -> float:
        row = np.array([[getattr(features, c) for c in FEATURE_COLUMNS]], dtype=np.float64)
        return float(self.time_of_rows(row, switched or idle, idle)[0])

    def swap_time(self, pages_out: Sequence[int], pages_in: Sequence[int]) -> float | None:
        """Seconds of one step's swap copies (pages per request moved to the host, then back) as the profile
        measured them (:func:`odrive.profiling.profiler.measure_swaps`), at ``speed``; None when it measured none."""
        layers = int(self.profile.meta.get("model", {}).get("config", {}).get("num_hidden_layers", 0))
        rows_out, rows_in = ([padded_swap_rows(layers, n) for n in pages if n] for pages in (pages_out, pages_in))
        seconds = self.fit.predict_swap(rows_out, rows_in) if layers else None
        return None if seconds is None else self.speed * seconds

    # --- exact path: per-sequence lengths ---------------------------------------------------------
    def step_time_chunks(
        self, q_lens: list[int], kv_lens: list[int], geometry: EngineGeometry | None = None, switched: bool = False,
        idle: bool = False,
    ) -> float:  # fmt: skip
        """Seconds for a step computing ``q_lens[i]`` new tokens of a ``kv_lens[i]``-token context each."""
        if not q_lens:
            return 0.0
        return self.time_of(step_features(q_lens, kv_lens, geometry or self.geometry), switched, idle)

    def decode_run_times_for(
        self, kv_lens: list[int], num_steps: int, geometry: EngineGeometry | None = None, switched: bool = False,
        idle: bool = False,
    ) -> np.ndarray:  # fmt: skip
        """``num_steps`` decode steps of sequences whose contexts (this step's token included) start at
        ``kv_lens``; equals calling :meth:`step_time_chunks` step by step (only the first may be ``switched`` or
        ``idle``: the batch keeps its compiled shape and the engine stays busy)."""
        if num_steps == 0:
            return np.zeros(0)
        flags, wake = np.zeros(num_steps), np.zeros(num_steps)
        flags[0], wake[0] = switched or idle, idle
        return self.time_of_rows(decode_run_features(kv_lens, num_steps, geometry or self.geometry), flags, wake)

    # --- the BatchShape interface ------------------------------------------------------------------
    def shape_features(self, shape: BatchShape) -> StepFeatures:
        """Features of a step known only by its sums (see the module docstring for the assumptions)."""
        n_dec = shape.num_decode_tokens
        n_pre = shape.num_seqs - n_dec
        dec_kv = shape.decode_attention_pairs if n_dec else 0
        q_lens: list[int] = []
        kv_lens: list[int] = []
        if n_pre > 0:
            pre_kv = max(shape.kv_tokens_read - dec_kv, shape.num_prefill_tokens)
            q_lens += _split(shape.num_prefill_tokens, n_pre)
            kv_lens += [max(q, k) for q, k in zip(q_lens, _split(pre_kv, n_pre), strict=True)]
        if n_dec:
            q_lens += [1] * n_dec
            kv_lens += _split(max(dec_kv, n_dec), n_dec)
        return step_features(q_lens, kv_lens, self.geometry)

    def step_time(self, shape: BatchShape) -> float:
        if shape.num_tokens == 0:
            return 0.0
        return self.time_of(self.shape_features(shape))

    def decode_run_times(self, num_seqs: int, kv_tokens_read: int, num_steps: int) -> np.ndarray:
        check_decode_run(num_seqs, kv_tokens_read, num_steps)
        if num_steps == 0:
            return np.zeros(0)
        # Equal contexts (the BatchShape assumption): the longest is ceil(mean); it grows 1 per step.
        k = np.arange(num_steps, dtype=np.int64)
        total = kv_tokens_read + num_seqs * k
        longest = -(-total // num_seqs)
        base = self.shape_features(BatchShape.decode_only(num_seqs, kv_tokens_read))
        rows = np.tile(np.array([getattr(base, c) for c in FEATURE_COLUMNS], np.float64), (num_steps, 1))
        blocks = -(-longest // self.geometry.decode_block_tokens)
        col = FEATURE_COLUMNS.index
        rows[:, col("decode_blocks")] = blocks
        rows[:, col("decode_kv_slots")] = base.padded_seqs * blocks * self.geometry.decode_block_tokens
        rows[:, col("kv_tokens")] = total
        return self.time_of_rows(rows)

    def make_executor(self, scheduler_config: SchedulerConfig, setup: ExecutorSetup = NO_SETUP
                      ) -> CalibratedSimExecutor:  # fmt: skip
        """The exact executor: :class:`CalibratedSimExecutor` with the geometry ``vSurge.create_odriver`` builds
        for ``scheduler_config``, ``setup.page_size`` (default: this model's) and ``setup.max_length``."""
        geometry = EngineGeometry.for_engine(scheduler_config, setup.page_size or self.page_size, setup.max_length)
        return CalibratedSimExecutor(
            self, scheduler_config, geometry, clock=setup.clock, kv_bytes_per_token=setup.kv_bytes_per_token,
            host_bandwidth=setup.host_bandwidth,
        )  # fmt: skip

    def with_speed(self, speed: float, prefill_speed: float | None = None) -> CalibratedLatencyModel:
        """The same model (sharing the fit) at ``speed``, and ``prefill_speed`` for steps with a prefill chunk
        (default: ``speed``): the times of the machine as profiled are multiplied by them."""
        return CalibratedLatencyModel(
            self.profile,
            geometry=self.geometry,
            page_size=self.page_size,
            speed=speed,
            prefill_speed=prefill_speed,
            host_overhead=self.host_overhead,
            switch_penalty=self.switch_penalty,
            fit=self.fit,
        )


def _warn_if_tiled_otherwise(profile: Profile) -> None:
    """Warn when ``profile`` was measured on an attention kernel tiled unlike today's: the features it was fitted on
    (the kernel's loop trips) then differ from those this model computes."""
    geometries = profile.meta.get("geometries") or {}
    if not geometries:
        return
    measured = EngineGeometry.from_dict(next(iter(geometries.values()))).tiling
    now = generic_geometry(16).tiling
    if measured != now:
        warnings.warn(
            f"profile {profile.path} was measured with attention tiles (prefill KV block, query tile, decode KV block) "
            f"= {measured} tokens; the engine now uses {now}: re-measure it with `odrive profile`",
            stacklevel=3,
        )


def _split(total: int, n: int) -> list[int]:
    """``n`` integers as equal as possible summing to ``total`` (largest first)."""
    q, r = divmod(int(total), n)
    return [q + 1] * r + [q] * (n - r)


class CalibratedSimExecutor(HostSwap, Executor):
    """The simulator's executor for a calibrated model: like ``SimExecutor`` it only models time, but hands
    the model each batch's per-sequence lengths (exact features) and the real engine's bucket geometry for
    ``scheduler_config`` (as ``vSurge.create_odriver`` builds it), and charges the measured switch penalty to
    a step whose compiled shape differs from the previous step's — or, given the simulator's ``clock``, that
    starts after the engine sat idle.

    Swap preemption costs what the profile measured the real engine's copies to cost
    (:meth:`CalibratedLatencyModel.swap_time`); a profile without swap measurements falls back on what
    ``SimExecutor`` charges (:class:`~sim.host_swap.HostSwap`: ``kv_bytes_per_token`` over ``host_bandwidth``, which
    ``build_engine`` passes from the SimConfig's model spec and accelerator). The copies keep the engine busy: a step
    after them is not idle."""

    supports_decode_runs = True

    def __init__(
        self,
        latency_model: CalibratedLatencyModel,
        scheduler_config: SchedulerConfig,
        geometry: EngineGeometry | None = None,
        clock: Callable[[], float] | None = None,
        *,
        kv_bytes_per_token: float | None = None,
        host_bandwidth: float | None = None,
    ) -> None:
        self.latency_model = self.model = latency_model
        self.scheduler_config = scheduler_config
        self.geometry = geometry or EngineGeometry.for_engine(scheduler_config, latency_model.page_size)
        self.clock = clock
        self.kv_bytes_per_token = kv_bytes_per_token
        self.host_bandwidth = host_bandwidth
        self._last_shape: tuple[int, int] | None = None
        self._busy_until = -np.inf
        self._swapped = (-np.inf, 0.0)  # (when, seconds) of the last copies: they run before that step's compute
        self._idled = False  # the engine sat idle before the last copies

    def _idle(self) -> bool:
        return self.clock is not None and self.clock() > self._busy_until + 1e-9

    def _switched(self, features: StepFeatures) -> tuple[bool, bool]:
        """(the compiled shape changed or the engine idled, the engine idled) for a step of ``features``."""
        shape = (features.padded_tokens, features.padded_seqs)
        switched, self._last_shape = shape != self._last_shape, shape
        idle = self._idled or self._idle()
        self._idled = False
        return switched or idle, idle

    def _ran(self, seconds: float) -> None:
        if self.clock is not None:
            now = self.clock()
            at, copies = self._swapped
            self._busy_until = now + (copies if at == now else 0.0) + seconds

    def swap_seconds(self, ops: SwapOps) -> float:
        measured = self.model.swap_time([len(p) for p in ops.swap_out.values()], [len(p) for p in ops.swap_in.values()])
        return measured if measured is not None else super().swap_seconds(ops)

    def swap(self, ops: SwapOps) -> float:
        seconds = self.swap_seconds(ops)
        if self.clock is not None:
            now = self.clock()
            self._idled = self._idled or self._idle()
            self._swapped = (now, seconds)
            self._busy_until = max(self._busy_until, now + seconds)  # a copies-only step keeps the engine busy too
        return seconds

    def copy_pages(self, copies: list[tuple[int, int]], page_size: int) -> float:
        """Copy-on-write of forked samples' pages: the profile measures none, so they are taken as free."""
        return 0.0

    def execute(self, batch: list[SeqChunk]) -> ExecuteResult:
        f = step_features([c.num_tokens for c in batch], [c.kv_len for c in batch], self.geometry)
        duration = self.model.time_of(f, *self._switched(f))
        self._ran(duration)
        return ExecuteResult(duration=duration)

    def decode_run_durations(self, batch: list[SeqChunk], num_steps: int) -> np.ndarray:
        kv = [c.kv_len for c in batch]
        switched, idle = self._switched(step_features([1] * len(kv), kv, self.geometry))
        durations = self.model.decode_run_times_for(kv, num_steps, self.geometry, switched, idle)
        self._ran(float(durations.sum()))  # a run cut short by an arrival is followed by a step, not idleness
        return durations


def check_model_matches(profile: Profile, model: ModelSpec) -> None:
    """Raise ValueError when ``model``'s shape differs from the profiled model's."""
    cfg = profile.meta.get("model", {}).get("config", {})
    diff = {k: (getattr(model, k), cfg.get(hf)) for k, hf in _SPEC_TO_HF.items() if cfg.get(hf) != getattr(model, k)}
    if diff:
        name = profile.meta.get("model", {}).get("spec_name") or "the profiled model"
        detail = ", ".join(f"{k}: {a} vs {b}" for k, (a, b) in diff.items())
        raise ValueError(
            f"profile {profile.path} was measured on {name}, not {model.name!r} ({detail}); "
            "profile this model with `odrive profile` or pass strict=False"
        )


@register_latency_model("calibrated")
def calibrated_latency_model(
    accelerator: Accelerator,
    model: ModelSpec,
    profile: str | Path | Profile | None = None,
    page_size: int | None = None,
    speed: float = 1.0,
    prefill_speed: float | None = None,
    strict: bool = True,
    tp: int = 1,
    **kw: Any,
) -> CalibratedLatencyModel:
    """Registry factory: ``profile`` defaults to the shipped profile of ``model`` (``data/profiles``)."""
    del accelerator  # the profile is the device
    if tp != 1:
        raise ConfigError(
            f"the calibrated latency model replays a single-device profile; tensor parallel size {tp} was asked "
            "for: use the roofline model (it models tp) or profile the sharded engine"
        )
    if profile is None or (isinstance(profile, str) and not profile):
        profile = find_profile(model.name)
    prof = profile if isinstance(profile, Profile) else Profile.load(profile)
    if strict:
        check_model_matches(prof, model)
    return CalibratedLatencyModel(prof, page_size=page_size, speed=speed, prefill_speed=prefill_speed, **kw)
