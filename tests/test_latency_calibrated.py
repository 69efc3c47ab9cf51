"""The calibrated latency model: registry, profile lookup, geometry = BatchBuilder's, fast-forward = stepping,
and a regression guard on the held-out error recorded in the shipped profile."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from odrive.calibration.features import (
    DECODE_KV_BLOCK_TOKENS,
    FEATURE_COLUMNS,
    KV_BLOCK_TOKENS,
    Q_BLOCK,
    EngineGeometry,
    decode_run_features,
    step_features,
)
from odrive.calibration.fit import fit_profile
from odrive.calibration.profile import PROFILE_DIR, Profile
from odrive.core.batch_builder import BatchBuilder
from odrive.core.executor import SeqChunk
from odrive.core.request import Request
from odrive.core.sampling_params import SamplingParams
from odrive.schedulers.config import SchedulerConfig
from sim.config import SimConfig
from sim.latency import BatchShape, CalibratedLatencyModel, get_latency_model
from sim.latency.executor_setup import ExecutorSetup
from sim.simulator import simulate
from sim.workloads import Uniform, poisson_workload

SHIPPED = PROFILE_DIR / "cpu-tiny-bench-f32.csv"
_MODEL = CalibratedLatencyModel(SHIPPED)  # hypothesis tests cannot take function-scoped fixtures


@pytest.fixture(scope="module")
def profile() -> Profile:
    return Profile.load(SHIPPED)


@pytest.fixture(scope="module")
def model(profile: Profile) -> CalibratedLatencyModel:
    return CalibratedLatencyModel(profile)


def test_registry_builds_it_from_a_path_or_the_shipped_default(profile: Profile) -> None:
    a = get_latency_model("calibrated", accelerator="h100-80gb", model="tiny-bench", profile=str(SHIPPED))
    b = get_latency_model("calibrated", accelerator="a100-80gb", model="tiny-bench")  # found by model name
    shape = BatchShape.decode_only(8, 8 * 200)
    assert isinstance(a, CalibratedLatencyModel) and a.step_time(shape) == b.step_time(shape) > 0
    assert profile.meta["model"]["dtype"] == "float32"


def test_a_profile_of_another_model_is_refused() -> None:
    with pytest.raises(ValueError, match="tiny-bench"):
        get_latency_model("calibrated", accelerator="h100-80gb", model="llama-2-7b", profile=str(SHIPPED))


def test_heldout_error_stays_below_the_recorded_value(profile: Profile) -> None:
    """Regression guard: refitting the shipped profile with today's features and fit must do no worse than
    the held-out error recorded when it was measured (and must beat both baselines that justify it)."""
    recorded = profile.meta["fit"]["heldout"]
    now = fit_profile(profile).heldout
    for key in ("leave_one_point_out", "leave_one_shape_out"):
        assert now[key]["median_abs_pct"] <= recorded[key]["median_abs_pct"] + 1e-6, key
        assert now[key]["p90_abs_pct"] <= recorded[key]["p90_abs_pct"] + 1e-6, key
    # Why a regression: it beats a BatchShape-only regression outright, and grid interpolation where it matters
    # to a simulator (the tail, and buckets never measured).
    assert now["leave_one_point_out"]["median_abs_pct"] < now["baseline_unpadded_linear_point_out"]["median_abs_pct"]
    assert now["leave_one_point_out"]["max_abs_pct"] < now["baseline_grid_interpolation_point_out"]["max_abs_pct"]
    shape_out = now["leave_one_shape_out"]["p90_abs_pct"]
    assert shape_out < now["baseline_grid_interpolation_shape_out"]["p90_abs_pct"]


def test_replay_calibration_beats_the_grid_model_in_the_serving_loop() -> None:
    """The shipped pinned profile's replay correction: its held-out (leave-one-replayed-workload-out) step error
    stays below the recorded value and below the grid model's own error on the same replayed steps."""
    pinned = Profile.load(PROFILE_DIR / "cpu-tiny-bench-f32-pinned.csv")
    recorded = pinned.meta["fit"]["heldout"]["replay"]
    now = fit_profile(pinned).heldout["replay"]
    for stat in ("median_abs_pct", "p90_abs_pct"):
        assert now["leave_one_replay_out"][stat] <= recorded["leave_one_replay_out"][stat] + 1e-6, stat
        assert now["leave_one_replay_out"][stat] < now["grid_model_only"][stat], stat
    model = CalibratedLatencyModel(pinned)
    assert model.fit.replay is not None and min(model.fit.replay.coef) >= 0
    # The correction is what the simulator charges: a switched step costs more, a bigger batch no less.
    assert model.step_time_chunks([1] * 4, [100] * 4, switched=True) > model.step_time_chunks([1] * 4, [100] * 4)
    assert model.step_time_chunks([1] * 8, [100] * 8) >= model.step_time_chunks([1] * 4, [100] * 4)


def test_every_count_costs_time(model: CalibratedLatencyModel) -> None:
    assert model.fit.step.intercept >= 0 and min(model.fit.step.coef) >= 0
    t = model.step_time_chunks
    assert t([1] * 8, [300] * 8) >= t([1] * 8, [100] * 8) >= t([1] * 4, [100] * 4)
    assert t([1] * 4, [16, 16, 16, 700]) > t([1] * 4, [187] * 4)  # the longest context sets the kernel's trips
    assert t([256], [256]) > t([64], [64]) > 0


def test_prefill_speed_scales_only_steps_with_a_prefill_chunk(model: CalibratedLatencyModel) -> None:
    both = model.with_speed(0.9, prefill_speed=0.8)
    t, t2 = model.step_time_chunks, both.step_time_chunks
    decode, prefill, mixed = ([1] * 4, [100] * 4), ([128], [128]), ([64, 1, 1], [64, 90, 200])
    assert t2(*decode) == pytest.approx(0.9 * t(*decode), rel=1e-12)
    assert t2(*prefill) == pytest.approx(0.8 * t(*prefill), rel=1e-12)
    assert t2(*mixed) == pytest.approx(0.8 * t(*mixed), rel=1e-12)  # a decode riding along a prefill chunk
    runs = both.decode_run_times_for([50, 70], 30), model.decode_run_times_for([50, 70], 30)
    np.testing.assert_allclose(runs[0], 0.9 * runs[1], rtol=1e-12)
    one = model.with_speed(0.9)  # one speed for both kinds, as before
    assert one.prefill_speed == 0.9 and one.step_time_chunks(*prefill) == pytest.approx(0.9 * t(*prefill), rel=1e-12)
    reg = get_latency_model("calibrated", accelerator="h100-80gb", model="tiny-bench", speed=0.9, prefill_speed=0.8)
    assert (reg.speed, reg.prefill_speed) == (0.9, 0.8)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf"), "fast"])
def test_a_speed_that_is_not_a_positive_number_is_refused(model: CalibratedLatencyModel, bad: object) -> None:
    with pytest.raises(ValueError, match="speed must be a finite number > 0"):
        model.with_speed(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="prefill_speed must be a finite number > 0"):
        model.with_speed(1.0, prefill_speed=bad)  # type: ignore[arg-type]


def test_features_follow_the_kernel_and_the_buckets() -> None:
    geo = EngineGeometry(16, (1, 2, 4, 8, 16, 32, 64, 128, 256), (1, 2, 4, 8, 16), pages_per_seq=32)
    f = step_features([1, 1, 1], [10, 300, 40], geo)  # the decode pass reads 32-token blocks: 300 -> 10 trips
    assert (f.padded_tokens, f.padded_seqs, f.decode_blocks, f.decode_kv_slots) == (4, 4, 10, 4 * 10 * 32)
    f = step_features([200], [456], geo)  # 256 cached + a 200-token chunk: tiles of 64 rows over 64-token blocks,
    assert (f.padded_tokens, f.prefill_tiles, f.prefill_blocks) == (256, 4, 5 + 6 + 7 + 8)  # to rows 319/383/447/455
    assert geo.block_tokens == 64 and EngineGeometry(128, (8,), (1,), pages_per_seq=2).block_tokens == 128
    assert geo.decode_block_tokens == 32 and EngineGeometry(128, (8,), (1,), pages_per_seq=4).decode_block_tokens == 128
    run = decode_run_features([10, 300, 40], 70, geo)  # contexts 300 .. 369: 10 trips until 320, then 11
    col = FEATURE_COLUMNS.index
    assert run[20, col("decode_blocks")] == 10 and run[21, col("decode_blocks")] == 11
    assert run[21, col("decode_kv_slots")] == 4 * 11 * 32


def test_the_geometry_tiles_attention_as_the_kernel_does() -> None:
    # The decode features are the blocked kernel's loop trips: its default tile sizes must be the geometry's.
    from kernels.blocked import ragged_paged_attention_blocked

    defaults = inspect.signature(ragged_paged_attention_blocked).parameters
    kernel = tuple(defaults[k].default for k in ("kv_block_tokens", "q_block", "decode_kv_block_tokens"))
    assert (
        EngineGeometry(16, (8,), (1,), pages_per_seq=4).tiling
        == kernel
        == (KV_BLOCK_TOKENS, Q_BLOCK, DECODE_KV_BLOCK_TOKENS)
    )
    # A geometry saved before the decode pass had its own block read KV 256 tokens at a time in both passes.
    old = {"page_size": 16, "token_buckets": [8], "seq_buckets": [1], "pages_per_seq": 4, "kv_block_tokens": 256,
           "q_block": 128}  # fmt: skip
    assert EngineGeometry.from_dict(old).decode_kv_block_tokens == 256
    geo = EngineGeometry(16, (8,), (1,), pages_per_seq=4)
    assert EngineGeometry.from_dict(geo.to_dict()) == geo


def _chunk(rid: str, q: int, kv: int, page_size: int) -> SeqChunk:
    decode = q == 1 and kv > 1
    req = Request.from_tokens(rid, list(range(3, 3 + kv - decode)), SamplingParams(max_tokens=4))
    if decode:
        req.output_token_ids.append(5)
        req.num_output_tokens = 1
    req.num_computed_tokens = kv - q
    return SeqChunk(req, kv - q, q, list(range(1, 1 + -(-kv // page_size))), True)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 96), st.integers(0, 300)), min_size=1, max_size=12),
    st.sampled_from([8, 16, 32]),
    st.integers(40, 300),
    st.integers(1, 16),
)
def test_geometry_reproduces_batch_builder_padding(seqs, page_size, max_prefill, max_decodes) -> None:
    cfg = SchedulerConfig(
        max_prefill_length=max_prefill,
        max_concurrent_decodes=max_decodes,
        max_num_batched_tokens=2048,
        max_model_len=1024,
    )
    geo = EngineGeometry.for_engine(cfg, page_size)
    seqs = seqs[: geo.seq_buckets[-1]]
    builder = BatchBuilder(page_size, geo.token_buckets, geo.seq_buckets, geo.pages_per_seq)
    batch = [_chunk(f"r{i}", q, q + c, page_size) for i, (q, c) in enumerate(seqs)]
    if sum(c.num_tokens for c in batch) > geo.token_buckets[-1]:
        return
    x = builder.build(batch)
    f = step_features([c.num_tokens for c in batch], [c.kv_len for c in batch], geo)
    assert (f.padded_tokens, f.padded_seqs) == (len(x.token_ids), len(x.kv_lens))


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 40), st.integers(0, 900), st.integers(0, 700))
def test_batchshape_decode_run_equals_stepping(num_seqs: int, extra: int, steps: int) -> None:
    model = _MODEL
    kv = num_seqs + extra
    run = model.decode_run_times(num_seqs, kv, steps)
    each = [model.step_time(BatchShape.decode_only(num_seqs, kv + k * num_seqs)) for k in range(steps)]
    np.testing.assert_allclose(run, each, rtol=1e-12)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 900), min_size=1, max_size=24), st.integers(0, 600))
def test_exact_decode_run_equals_stepping(kv_lens: list[int], steps: int) -> None:
    model = _MODEL
    run = model.decode_run_times_for(kv_lens, steps)
    each = [model.step_time_chunks([1] * len(kv_lens), [k + s for k in kv_lens]) for s in range(steps)]
    np.testing.assert_allclose(run, each, rtol=1e-12)


def test_exact_executor_fast_forward_equals_stepping() -> None:
    """The calibrated executor keeps state (the previous compiled shape): fast-forwarded decode runs must still
    give what stepping one at a time gives."""
    from odrive.profiling.simrun import simulate_calibrated

    wl = poisson_workload(100.0, 120, Uniform(16, 200), Uniform(4, 48), seed=2)
    cfg = _calibrated_config()
    fast = simulate_calibrated(cfg, wl, _MODEL, max_length=512).requests
    slow = simulate_calibrated(cfg, wl, _MODEL, max_length=512, fast_forward=False).requests
    assert fast["num_preemptions"].sum() > 0  # overloaded and short of pages: preemptions, idle gaps, switches
    np.testing.assert_allclose(fast["finish_time"], slow["finish_time"], rtol=1e-9)
    np.testing.assert_allclose(fast["first_token_time"], slow["first_token_time"], rtol=1e-9)


def test_a_change_of_compiled_shape_pays_the_switch_penalty() -> None:
    from sim.latency.calibrated import CalibratedSimExecutor

    ex = CalibratedSimExecutor(_MODEL, SchedulerConfig(max_prefill_length=256, max_concurrent_decodes=16))
    decode, prefill = [_chunk("a", 1, 100, 16)], [_chunk("b", 64, 64, 16)]
    first, steady = ex.execute(decode).duration, ex.execute(decode).duration
    assert _MODEL.switch_penalty_s > 0 and first > steady
    p1, p2 = ex.execute(prefill).duration, ex.execute(prefill).duration
    assert p1 > p2 and ex.execute(decode).duration == first


def test_a_step_after_idleness_also_pays_the_wake_up_cost() -> None:
    """The replay calibration measures a step that starts on an idle engine ~1.3 ms slower than another shape
    switch (the host wakes up); the simulator charges it when its clock says the engine sat idle."""
    wake = _MODEL.fit.replay.to_dict()["after_idle"]
    assert wake > 0
    now = [0.0]
    sched = SchedulerConfig(max_prefill_length=256, max_concurrent_decodes=16)
    ex = _MODEL.make_executor(sched, ExecutorSetup(clock=lambda: now[0], kv_bytes_per_token=4096.0, host_bandwidth=1e9))
    decode, prefill = [_chunk("a", 1, 100, 16)], [_chunk("b", 64, 64, 16)]
    after_idle = ex.execute(decode).duration  # nothing ran before: idle
    now[0] += after_idle
    now[0] += ex.execute(prefill).duration
    switched = ex.execute(decode).duration  # back to the decode shape, busy all along
    assert after_idle - switched == pytest.approx(wake, rel=1e-9)
    run_idle = _MODEL.decode_run_times_for([100, 40], 3, ex.geometry, idle=True)
    run_switched = _MODEL.decode_run_times_for([100, 40], 3, ex.geometry, switched=True)
    assert run_idle[0] - run_switched[0] == pytest.approx(wake, rel=1e-9)
    np.testing.assert_array_equal(run_idle[1:], run_switched[1:])


def test_simulator_runs_on_the_calibrated_model() -> None:
    wl = poisson_workload(20.0, 200, Uniform(16, 200), Uniform(4, 48), seed=1)
    cfg = _calibrated_config(num_pages=300)
    result = simulate(cfg, wl)
    assert result.summary["finished"] == 200 and 0.001 < result.summary["tpot_p50"] < 0.2


def test_odrive_sim_cli_accepts_the_calibrated_model(tmp_path) -> None:
    from odrive.cli import main

    rc = main(
        [
            "sim",
            "--latency-model",
            "calibrated",
            "--model",
            "tiny-bench",
            "--profile",
            str(SHIPPED),
            "--workload",
            "poisson:rate=20,n=100,prompt=uniform(16,128),output=uniform(4,32)",
            "--num-pages",
            "400",
            "--max-prefill-length",
            "256",
            "--max-concurrent-decodes",
            "16",
            "--out",
            str(tmp_path),
            "--no-progress",
        ]
    )
    assert rc == 0 and (tmp_path / "summary.csv").is_file()


def test_odrive_sim_cli_passes_latency_model_options(tmp_path) -> None:
    import pandas as pd

    from odrive.cli import main
    from odrive.errors import ConfigError

    base = ["sim", "--latency-model", "calibrated", "--model", "tiny-bench", "--profile", str(SHIPPED),
            "--workload", "poisson:rate=1000,n=40,prompt=64,output=16", "--num-pages", "400",
            "--max-prefill-length", "256", "--max-concurrent-decodes", "16", "--no-progress"]  # fmt: skip
    assert main([*base, "--out", str(tmp_path / "as_profiled")]) == 0
    faster = ["--latency-arg", "speed=0.5", "--latency-arg", "prefill-speed=0.5"]
    assert main([*base, *faster, "--out", str(tmp_path / "twice_as_fast")]) == 0
    durations = [float(pd.read_csv(tmp_path / run / "summary.csv", index_col=0)["value"]["duration_s"])
                 for run in ("as_profiled", "twice_as_fast")]  # fmt: skip
    assert durations[1] == pytest.approx(durations[0] / 2, rel=0.05)  # arrivals within 40 ms: busy time halves
    bad = [*base, "--latency-arg", "warp=9", "--out", str(tmp_path / "bad")]
    assert main(bad) == 2  # a user error: one line on stderr (tests/test_cli_errors.py)
    with pytest.raises(ConfigError, match="latency model 'calibrated' rejected options.*warp"):
        main([*bad, "--debug"])


# --- the simulator builds the exact executor (LatencyModel.make_executor) ------------------------------------


def _calibrated_config(**kw) -> SimConfig:
    base = dict(
        model="tiny-bench",
        latency_model="calibrated",
        num_pages=80,
        max_prefill_length=256,
        max_concurrent_prefill=1,
        max_concurrent_decodes=16,
        latency_kwargs=(("profile", str(SHIPPED)),),
    )
    return SimConfig(**{**base, **kw})


def test_build_engine_asks_the_latency_model_for_its_executor() -> None:
    from sim.executor import SimExecutor
    from sim.latency.calibrated import CalibratedSimExecutor
    from sim.simulator import build_engine

    cfg = _calibrated_config()
    executor = build_engine(cfg, clock=lambda: 0.0).executor
    assert isinstance(executor, CalibratedSimExecutor) and executor.clock is not None
    assert executor.geometry == EngineGeometry.for_engine(cfg.scheduler_config(), cfg.page_size)
    assert executor.kv_bytes_per_token and executor.host_bandwidth  # from the model spec and the accelerator
    roofline = build_engine(SimConfig(model="tiny-bench", num_pages=80)).executor
    assert type(roofline) is SimExecutor


def test_the_simulator_times_requests_as_the_exact_validation_path() -> None:
    from odrive.profiling.simrun import simulate_calibrated

    wl = poisson_workload(100.0, 120, Uniform(16, 200), Uniform(4, 48), seed=2)
    cfg = _calibrated_config()
    stock = simulate(cfg, wl).requests.sort_values("request_id").reset_index(drop=True)
    exact = simulate_calibrated(cfg, wl, _MODEL, exact=True).requests.sort_values("request_id")
    shape = simulate_calibrated(cfg, wl, _MODEL, exact=False).requests.sort_values("request_id")
    assert stock["num_preemptions"].sum() > 0  # overloaded: idle gaps, switches and preemptions are all compared
    for col in ("first_token_time", "finish_time"):
        assert stock[col].tolist() == exact[col].tolist()
    assert stock["finish_time"].tolist() != shape["finish_time"].tolist()  # the BatchShape path differs


def test_swap_preemption_with_the_calibrated_model() -> None:
    from sim.hardware import get_accelerator
    from sim.model_spec import get_model_spec

    wl = poisson_workload(200.0, 40, Uniform(32, 200), Uniform(16, 64), seed=3)
    cfg = _calibrated_config(num_pages=24, preemption_mode="swap", swap_space_pages=200, check_invariants=True)
    result = simulate(cfg, wl)
    assert result.summary["finished"] == 40 and result.requests["num_preemptions"].sum() > 0
    out, back = result.summary["swap_pages_out"], result.summary["swap_pages_in"]
    assert out > 0 and back == out
    page_bytes = get_model_spec(cfg.model).kv_bytes_per_page(cfg.page_size)
    bandwidth = get_accelerator(cfg.accelerator).host_bandwidth
    seconds = result.summary["swap_seconds"]
    assert seconds > 0 and seconds == pytest.approx((out + back) * page_bytes / bandwidth)


def test_swap_copies_keep_the_calibrated_executor_busy() -> None:
    """Copies run before the step's compute: the next step is neither idle nor switched, and a calibrated
    executor without the swap rates refuses to guess them."""
    from odrive.core.executor import SwapOps
    from odrive.errors import ConfigError
    from sim.latency.calibrated import CalibratedSimExecutor

    now = [0.0]
    sched = SchedulerConfig(max_prefill_length=256, max_concurrent_decodes=16)
    ex = _MODEL.make_executor(sched, ExecutorSetup(clock=lambda: now[0], kv_bytes_per_token=4096.0, host_bandwidth=1e9))
    assert isinstance(ex, CalibratedSimExecutor)
    decode = [_chunk("a", 1, 100, 16)]
    first = ex.execute(decode).duration
    now[0] += first
    steady = ex.execute(decode).duration
    assert first > steady
    now[0] += steady
    ops = SwapOps({"x": [1, 2, 3]}, {}, 16)
    copies = ex.swap(ops)
    assert copies == pytest.approx(3 * 16 * 4096.0 / 1e9)
    assert ex.execute(decode).duration == steady  # copies then compute, same step
    now[0] += copies + steady
    assert ex.swap(ops) == copies  # a copies-only step ...
    now[0] += copies
    assert ex.execute(decode).duration == steady  # ... keeps the engine busy
    now[0] += steady + 1.0
    assert ex.execute(decode).duration == first  # idle: the switch penalty again
    with pytest.raises(ConfigError, match="host_bandwidth"):
        CalibratedSimExecutor(_MODEL, sched).swap(ops)
