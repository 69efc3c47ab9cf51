"""results.json with vllm bench serve's keys and units: definitions checked on hand-made rows, percentiles and
goodput options, and every odrive sim run writing one."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from odrive.bench.results import (
    metric_keys,
    parse_goodput,
    parse_percentiles,
    read_results,
    serving_results,
    write_results,
)
from odrive.core.latency_histogram import LatencyHistogram
from sim.cli import main as sim_main


def rows() -> pd.DataFrame:
    """Four requests: three finished (one with a single output token), one rejected."""
    frame = pd.DataFrame({
        "status": ["finished", "finished", "finished", "aborted"],
        "num_prompt_tokens": [100, 200, 50, 7000],
        "num_output_tokens": [11, 1, 5, 0],
        "ttft": [0.1, 0.3, 0.2, math.nan],
        "e2e": [1.1, 0.3, 0.6, math.nan],
    })  # fmt: skip
    frame["tpot"] = (frame["e2e"] - frame["ttft"]) / (frame["num_output_tokens"] - 1).where(
        frame["num_output_tokens"] > 1
    )
    return frame


ITL = np.array([0.1] * 10 + [0.05, 0.1, 0.15, 0.1])  # the gaps of requests 0 (10) and 2 (4)


def test_definitions_match_vllm() -> None:
    r = serving_results(rows(), ITL, duration=2.0, percentiles=[50, 90, 99.9], info={"backend": "x"})
    assert r["backend"] == "x" and r["num_prompts"] == 4
    assert (r["completed"], r["failed"], r["total_input_tokens"], r["total_output_tokens"]) == (3, 1, 350, 17)
    assert r["request_throughput"] == 1.5 and r["output_throughput"] == 8.5 and r["total_token_throughput"] == 183.5
    assert r["request_goodput"] is None
    # TTFT / E2EL over completed requests, in ms; TPOT only where more than one token (0.1 and 0.1)
    assert r["mean_ttft_ms"] == pytest.approx(200.0) and r["median_e2el_ms"] == pytest.approx(600.0)
    assert r["std_ttft_ms"] == pytest.approx(1000 * np.std([0.1, 0.3, 0.2]))
    assert r["mean_tpot_ms"] == pytest.approx(100.0) and r["std_tpot_ms"] == pytest.approx(0.0, abs=1e-9)
    assert r["mean_itl_ms"] == pytest.approx(1000 * ITL.mean()) and r["p90_itl_ms"] == pytest.approx(
        1000 * np.percentile(ITL, 90))  # fmt: skip
    assert r["p99.9_e2el_ms"] == pytest.approx(1000 * np.percentile([1.1, 0.3, 0.6], 99.9))
    assert r["p50_ttft_ms"] == r["median_ttft_ms"]
    # the same from a histogram of the gaps: mean exact, percentiles within its bucket width
    h = LatencyHistogram()
    h.add_many(ITL)
    rh = serving_results(rows(), h, duration=2.0, percentiles=[50, 90, 99.9])
    assert rh["mean_itl_ms"] == pytest.approx(r["mean_itl_ms"], rel=1e-12)
    assert rh["p90_itl_ms"] == pytest.approx(r["p90_itl_ms"], rel=2e-3)
    assert metric_keys(r)[:9] == ["completed", "failed", "total_input_tokens", "total_output_tokens", "duration",
                                  "request_throughput", "request_goodput", "output_throughput",
                                  "total_token_throughput"]  # fmt: skip
    assert metric_keys(r)[9:15] == ["mean_ttft_ms", "median_ttft_ms", "std_ttft_ms", "p50_ttft_ms", "p90_ttft_ms",
                                    "p99.9_ttft_ms"]  # fmt: skip


def test_goodput_counts_requests_meeting_every_slo() -> None:
    # request 1 has one output token: TPOT 0 for goodput, as vLLM counts it
    assert serving_results(rows(), ITL, duration=2.0, goodput={"tpot": 100})["request_goodput"] == 1.5
    assert serving_results(rows(), ITL, duration=2.0, goodput={"ttft": 200})["request_goodput"] == 1.0
    r = serving_results(rows(), ITL, duration=2.0, goodput={"ttft": 250, "e2el": 1000})
    assert r["request_goodput"] == 0.5 and r["goodput_slos_ms"] == {"ttft": 250, "e2el": 1000}
    assert parse_goodput(["ttft:500", "e2el:2000.5"]) == {"ttft": 500.0, "e2el": 2000.5}
    for bad in (["ttft"], ["itl:5"], ["ttft:-1"], ["tpot:x"]):
        with pytest.raises(ValueError, match="KEY:MILLISECONDS"):
            parse_goodput(bad)
    assert parse_percentiles("50, 90,99.9") == [50.0, 90.0, 99.9]
    for bad in ("", "0", "101", "a"):
        with pytest.raises(ValueError, match="metric-percentiles"):
            parse_percentiles(bad)


def test_nothing_completed_writes_zeros_and_results_round_trip(tmp_path: Path) -> None:
    r = serving_results(rows().iloc[3:], np.zeros(0), duration=0.0)
    assert r["completed"] == 0 and r["mean_ttft_ms"] == 0.0 and r["p99_itl_ms"] == 0.0
    path = write_results(tmp_path / "r.json", {**r, "odd": math.nan})
    back = read_results(path)
    assert back["odd"] is None and back["completed"] == 0
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(ValueError, match="not a JSON file"):
        read_results(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text('{"a": 1}')
    with pytest.raises(ValueError, match="not a benchmark result"):
        read_results(tmp_path / "other.json")
    with pytest.raises(FileNotFoundError, match="nope.json"):
        read_results(tmp_path / "nope.json")


def test_odrive_sim_writes_results_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert sim_main(["--workload", "poisson:rate=20,n=150,prompt=uniform(50,600),output=uniform(1,80)",
                     "--out", str(tmp_path), "--no-progress", "--metric-percentiles", "50,90,99",
                     "--goodput", "ttft:30", "tpot:10"]) == 0  # fmt: skip
    assert "results.json" in capsys.readouterr().out
    r = json.loads((tmp_path / "results.json").read_text())
    requests = pd.read_csv(tmp_path / "requests.csv")
    done = requests[requests["status"] == "finished"]
    assert r["backend"] == "odrive-sim" and r["completed"] == len(done) == 150
    assert r["total_output_tokens"] == done["num_output_tokens"].sum()
    span = requests["finish_time"].max() - requests["arrival_time"].min()
    assert r["duration"] == pytest.approx(span) and r["request_throughput"] == pytest.approx(150 / span)
    assert r["p90_ttft_ms"] == pytest.approx(1000 * np.percentile(done["ttft"], 90))
    multi = done[done["num_output_tokens"] > 1]
    assert r["mean_tpot_ms"] == pytest.approx(1000 * multi["tpot"].mean())
    # ITL: the gaps of every request; their mean is the token-weighted TPOT
    weights = multi["num_output_tokens"] - 1
    assert r["mean_itl_ms"] == pytest.approx(1000 * (multi["tpot"] * weights).sum() / weights.sum(), rel=1e-9)
    good = ((done["ttft"] <= 0.03) & (done["tpot"].fillna(0) <= 0.01)).sum()
    assert r["request_goodput"] == pytest.approx(good / span)
    for key in ("p50_itl_ms", "p99_e2el_ms", "std_tpot_ms", "median_itl_ms"):
        assert key in r


def test_sim_cluster_writes_results_json(tmp_path: Path) -> None:
    from sim.cluster.cli import main as cluster_main

    assert cluster_main(["--workload", "poisson:rate=40,n=200,prompt=uniform(50,600),output=uniform(1,80)",
                         "--replicas", "3", "--router", "least-outstanding", "--out", str(tmp_path), "--no-progress",
                         "--metric-percentiles", "50,99", "--format", "csv"]) == 0  # fmt: skip
    r = json.loads((tmp_path / "results.json").read_text())
    rows = pd.read_csv(tmp_path / "requests.csv")
    done = rows[rows["status"] == "finished"]
    assert (r["replicas"], r["router"], r["completed"]) == (3, "least-outstanding", len(done))
    assert r["p99_e2el_ms"] == pytest.approx(1000 * np.percentile(done["e2e"], 99))
    multi = done[done["num_output_tokens"] > 1]
    weights = multi["num_output_tokens"] - 1
    assert r["mean_itl_ms"] == pytest.approx(1000 * (multi["tpot"] * weights).sum() / weights.sum(), rel=1e-9)
