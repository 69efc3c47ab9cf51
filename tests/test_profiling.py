"""The profiler writes a valid profile; the replay driver and the engine geometry match the real engine."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from odrive.calibration.features import FEATURE_COLUMNS, EngineGeometry
from odrive.calibration.profile import Profile
from sim.latency import CalibratedLatencyModel
from sim.workloads import Workload


@pytest.fixture(scope="module")
def small_model():
    from odrive.models.config import LlamaConfig
    from odrive.profiling.profiler import tiny_bench_model

    cfg = LlamaConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
    )
    return tiny_bench_model("float32", config=cfg)


def test_profile_cli_writes_a_valid_profile(tmp_path) -> None:
    """``odrive profile --tiny-bench --quick``: table + metadata, loadable, fitted, usable by the sim model."""
    from odrive.cli import main

    out = tmp_path / "p.csv"
    assert main(["profile", "--tiny-bench", "--quick", "--out", str(out), "--repeats", "2"]) == 0
    profile = Profile.load(out.with_suffix(".json"))
    fwd, eng = profile.forward, profile.engine
    assert len(fwd) >= 6 and len(eng) >= 1
    assert set(FEATURE_COLUMNS) <= set(fwd.columns)
    assert (fwd["exec_s"] > 0).all() and (fwd["forward_s"] > 0).all() and (fwd["build_s"] > 0).all()
    assert (eng["period_s"] >= eng["exec_s"]).all()
    meta = json.loads(out.with_suffix(".json").read_text())
    for key in ("created", "host", "model", "attention_impl", "geometries", "grid", "fit", "round_drift"):
        assert key in meta, key
    assert meta["host"]["jax_version"] and meta["model"]["dtype"] == "float32"
    assert meta["model"]["config"]["hidden_size"] == 256 and meta["model"]["spec_name"] == "tiny-bench"
    assert meta["geometries"]["16"]["token_buckets"][0] == 1
    assert meta["fit"]["heldout"]["leave_one_point_out"]["median_abs_pct"] >= 0
    # The replay calibration: the serving loop's own steps, and a correction fitted on them.
    replayed = profile.replay
    assert len(replayed) >= 8 and replayed["run"].nunique() == 2 and (replayed["period_s"] > 0).all()
    assert set(meta["fit"]["replay_coef"]) == {"intercept", "exec_decode", "exec_prefill", "switched", "after_idle",
                                               "num_seqs"}  # fmt: skip
    assert replayed["after_idle"].astype(bool).any()  # the first step of every replay starts on an idle engine
    assert meta["fit"]["heldout"]["replay"]["leave_one_replay_out"]["median_abs_pct"] >= 0
    model = CalibratedLatencyModel(profile)
    assert model.fit.replay is not None
    assert model.step_time_chunks([1] * 4, [100] * 4) > 0


def test_profile_round_trips_through_parquet(tmp_path) -> None:
    table = pd.DataFrame({"source": ["forward"], "exec_s": [0.01]})
    Profile(table, {"page_sizes": [16]}).save(tmp_path / "x.parquet")
    back = Profile.load(tmp_path / "x.parquet")
    assert back.table.equals(table) and back.meta["page_sizes"] == [16]


def test_engine_geometry_is_what_create_odriver_builds(small_model) -> None:
    from odrive.vsurge.driver import vSurge

    for ps, mpl, mcd, prefill_lengths in ((16, 256, 16, None), (8, 100, 12, (40, 100)), (32, 64, 5, None)):
        surge = vSurge.create_odriver(
            model=small_model,
            max_prefill_length=mpl,
            page_size=ps,
            num_pages=64,
            max_concurrent_decodes=mcd,
            prefill_lengths=prefill_lengths,
        )
        cfg = surge.engine.scheduler.config
        assert EngineGeometry.of_builder(surge.executor.builder) == EngineGeometry.for_engine(cfg, ps)


def test_replay_stamps_arrivals_and_records_every_step(small_model) -> None:
    from odrive.profiling.replay import replay
    from odrive.vsurge.driver import vSurge

    surge = vSurge.create_odriver(
        model=small_model, max_prefill_length=32, page_size=8, num_pages=64, max_concurrent_decodes=4
    )
    wl = Workload(np.array([0.0, 0.0, 0.05, 0.08]), np.array([5, 20, 9, 32]), np.array([3, 6, 2, 4]))
    replay(surge, wl)  # compiles: arrivals during a step wait for its end
    result = replay(surge, wl)
    r = result.requests
    assert list(r["index"]) == [0, 1, 2, 3] and list(r["num_output_tokens"]) == [3, 6, 2, 4]
    np.testing.assert_allclose(r["arrival_time"], wl.arrival_times)
    assert (r["first_token_time"] > r["arrival_time"]).all() and (r["finish_time"] >= r["first_token_time"]).all()
    assert (result.admit_lag_s < 0.05).all()  # at most about one (compiled) step late
    s = result.steps
    assert len(s) == len(result.plans) and (s["exec_s"] > 0).all()
    assert s["period_s"].dropna().ge(s["exec_s"].loc[s["period_s"].notna()]).all()
    assert result.plans["scheduled"].iloc[0] == "0:5"  # FCFS, one prefill per step
    assert not surge.engine.has_unfinished and not surge.engine.outcome_listeners  # the replay stopped listening
