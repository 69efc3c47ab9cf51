"""The speed probe's statistics: measured over predicted step time, over all steps or one kind of step, with
predictions at the machine-as-profiled speed whatever speed the model was given."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from odrive.calibration.features import EngineGeometry
from odrive.calibration.profile import PROFILE_DIR
from odrive.profiling.probe import geometric_mean, predict_steps, speed_of
from odrive.schedulers.config import SchedulerConfig
from sim.latency import CalibratedLatencyModel

MODEL = CalibratedLatencyModel(PROFILE_DIR / "cpu-tiny-bench-f32.csv", page_size=16)
GEOMETRY = EngineGeometry.for_engine(SchedulerConfig(max_prefill_length=128, max_concurrent_decodes=8), 16, 256)


def replayed_steps() -> pd.DataFrame:
    """A replay's step frame: a prefill, two decode steps, a prefill with a decode riding along, a decode after
    idleness (no period: the engine idled after it)."""
    q = ["100", "1", "1", "60;1", "1;1"]
    kv = ["100", "101", "102", "60;103", "61;104"]
    return pd.DataFrame({
        "q_lens": q, "kv_lens": kv, "after_idle": [True, False, False, False, True],
        "num_prefill_seqs": [1, 0, 0, 1, 0], "period_s": [0.02, 0.004, 0.004, 0.012, np.nan],
    })  # fmt: skip


def test_predictions_are_at_the_profiled_speed_whatever_the_models_speed() -> None:
    unit = predict_steps(replayed_steps(), MODEL, GEOMETRY)
    scaled = predict_steps(replayed_steps(), MODEL.with_speed(2.0, prefill_speed=3.0), GEOMETRY)
    np.testing.assert_allclose(scaled["predicted_s"], unit["predicted_s"], rtol=1e-12)
    assert unit["switched"].tolist() == [True, True, False, True, True]


def test_speed_of_each_kind_of_step() -> None:
    steps = predict_steps(replayed_steps(), MODEL, GEOMETRY)
    steps["period_s"] = steps["predicted_s"] * np.array([0.8, 0.9, 0.9, 0.8, np.nan])
    assert speed_of(steps, "prefill") == pytest.approx(0.8)
    assert speed_of(steps, "decode") == pytest.approx(0.9)  # the step without a period is left out
    assert 0.8 < speed_of(steps) < 0.9
    assert speed_of(steps.iloc[1:3], "prefill") == 1.0  # no such step: the profile's speed
    with pytest.raises(ValueError, match="kind"):
        speed_of(steps, "mixed")


def test_geometric_mean() -> None:
    assert geometric_mean(0.5, 2.0) == pytest.approx(1.0)
    assert geometric_mean(0.9) == pytest.approx(0.9)


def test_odrive_probe_prints_the_speeds_and_the_flags_that_apply_them(capsys) -> None:
    import json

    from odrive.cli import main

    profile = PROFILE_DIR / "cpu-tiny-bench-f32.csv"  # unpinned: JAX already runs in this process
    rc = main(["probe", "--tiny-bench", "--profile", str(profile), "--probes", "2", "--pin-cores", "no",
               "--max-prefill-length", "128", "--max-concurrent-decodes", "8", "--max-length", "256"])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0
    result = json.loads(out[: out.rindex("}") + 1])
    assert len(result["probes"]) == 2 and all(p["num_steps"] > 16 for p in result["probes"])
    for kind in ("speed", "decode_speed", "prefill_speed"):
        assert 1 / 3 < result[kind] < 3, (kind, result)  # this machine, give or take other users' load
    assert f"--latency-arg prefill_speed={result['prefill_speed']:.4f}" in out


def test_a_probe_of_another_model_than_the_profiled_one_is_refused(tmp_path) -> None:
    from odrive.cli import main
    from odrive.models.checkpoint import save_model
    from odrive.profiling.profiler import TINY_BENCH, tiny_bench_model

    wider = dataclasses.replace(TINY_BENCH, intermediate_size=1024)
    save_model(tiny_bench_model(config=wider), tmp_path / "wider")
    profile = PROFILE_DIR / "cpu-tiny-bench-f32.csv"
    argv = ["probe", "--model", str(tmp_path / "wider"), "--profile", str(profile), "--pin-cores", "no"]
    assert main(argv) == 2  # one line on stderr
    with pytest.raises(ValueError, match="measured on tiny-bench.*intermediate_size: 1024 vs 512"):
        main([*argv, "--debug"])
