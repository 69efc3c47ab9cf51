"""The cluster simulator: one replica equals the single-replica Simulator, the fast-forward horizons are
exact, results are deterministic per seed, tables stream in chunks, summaries match the core's."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from odrive.core.metrics import summarize
from sim.cluster import ClusterSimulator, simulate_cluster, zipf_groups
from sim.config import SimConfig
from sim.simulator import simulate
from sim.workloads import poisson_workload
from sim.workloads.lengths import LogNormal, Uniform

CONFIG = SimConfig(record_steps=False)
TIGHT = SimConfig(record_steps=False, num_pages=300, max_concurrent_decodes=32)  # preemptions happen
EXACT = ["replica", "request_id", "status", "finish_reason", "num_prompt_tokens", "num_output_tokens",
         "num_preemptions"]  # fmt: skip
TIMES = ["arrival_time", "first_scheduled_time", "first_token_time", "finish_time"]


def workload(n: int = 400, rate: float = 40.0, seed: int = 0):
    return poisson_workload(rate, n, LogNormal(600, 1.0, 16, 4000), Uniform(8, 300), seed=seed)


def assert_same_requests(a: pd.DataFrame, b: pd.DataFrame) -> None:
    a = a.sort_values("request_id", kind="stable").reset_index(drop=True)
    b = b.sort_values("request_id", kind="stable").reset_index(drop=True)
    assert len(a) == len(b)
    pd.testing.assert_frame_equal(a[EXACT].astype(str), b[EXACT].astype(str))
    np.testing.assert_allclose(a[TIMES].to_numpy(float), b[TIMES].to_numpy(float), rtol=0, atol=1e-9)


def test_one_replica_reproduces_the_single_replica_simulator():
    w = workload()
    for config in (CONFIG, TIGHT):
        cluster = simulate_cluster(config, w, "round-robin")
        single = simulate(config, w).requests.assign(replica=0)
        assert_same_requests(cluster.requests(), single)
        assert cluster.requests()["num_preemptions"].sum() == single["num_preemptions"].sum()
    assert single["num_preemptions"].sum() > 0


@pytest.mark.parametrize("router", ["round-robin", "least-outstanding", "power-of-two", "least-kv-load",
                                    "prefix-affinity"])  # fmt: skip
def test_lookahead_horizons_equal_the_conservative_horizon(router):
    w = workload(n=500, rate=120.0)
    keys = zipf_groups(len(w), 10, seed=1)
    fast = simulate_cluster(TIGHT, w, router, num_replicas=4, prefix_keys=keys, seed=2)
    slow = simulate_cluster(TIGHT, w, router, num_replicas=4, prefix_keys=keys, seed=2, horizon="conservative")
    assert_same_requests(fast.requests(), slow.requests())
    assert fast.summary["engine_step_calls"] <= slow.summary["engine_step_calls"]
    assert fast.routed_ahead == (router in ("round-robin", "prefix-affinity"))
    assert not slow.routed_ahead


def test_deterministic_per_seed():
    w = workload(n=300, rate=80.0)
    a = simulate_cluster(CONFIG, w, "power-of-two", num_replicas=4, seed=7).requests()
    b = simulate_cluster(CONFIG, w, "power-of-two", num_replicas=4, seed=7).requests()
    c = simulate_cluster(CONFIG, w, "power-of-two", num_replicas=4, seed=8).requests()
    pd.testing.assert_frame_equal(a, b)
    assert not a.sort_values("request_id")["replica"].equals(c.sort_values("request_id")["replica"])


def test_every_request_is_served_once_and_pages_are_returned():
    w = workload(n=600, rate=150.0)
    result = simulate_cluster(TIGHT, w, "least-outstanding", num_replicas=3)
    req = result.requests()
    assert sorted(req["request_id"]) == sorted(f"r{i}" for i in range(len(w)))
    assert (req["status"] == "finished").all()
    assert (result.replicas["free_pages_at_end"] == result.replicas["num_pages"]).all()
    assert result.replicas["requests"].sum() == len(w)
    assert result.summary["preemptions"] > 0


def test_summaries_match_the_core_summarize_and_least_outstanding_balances():
    w = workload(n=400, rate=100.0)
    result = simulate_cluster(dataclasses.replace(CONFIG, record_steps=True), w, "least-outstanding",
                              num_replicas=4, record_steps=True)  # fmt: skip
    req, steps = result.requests(), result.steps()
    expected = summarize(req, steps)
    for key, value in expected.items():
        assert result.summary[key] == pytest.approx(value, rel=1e-9, nan_ok=True), key
    for r in range(4):
        row = result.replicas.iloc[r]
        exp = summarize(req[req["replica"] == r], steps[steps["replica"] == r])
        for key in ("requests", "ttft_p99", "e2e_mean", "mean_page_utilization", "peak_pages_used", "num_steps"):
            assert row[key] == pytest.approx(exp[key], rel=1e-9), key
    assert result.summary["requests_per_replica_max_over_mean"] < 1.1


def test_chunked_streaming_in_csv_and_parquet_give_the_same_table(tmp_path):
    w = workload(n=150, rate=60.0)
    pq = simulate_cluster(CONFIG, w, "round-robin", num_replicas=2, out_dir=tmp_path / "pq", chunk_rows=7)
    csv = simulate_cluster(CONFIG, w, "round-robin", num_replicas=2, out_dir=tmp_path / "csv",
                           table_format="csv", chunk_rows=1000)  # fmt: skip
    assert pq.requests_path.name == "requests.parquet" and csv.requests_path.name == "requests.csv"
    assert_same_requests(pq.requests(), csv.requests())
    pd.testing.assert_series_equal(pq.summary.drop(["wall_time_s", "simulated_requests_per_wall_s"]),
                                   csv.summary.drop(["wall_time_s", "simulated_requests_per_wall_s"]))  # fmt: skip


def test_rows_leave_memory_as_chunks_fill(tmp_path):
    w = workload(n=200, rate=80.0)
    sim = ClusterSimulator(CONFIG, w, "round-robin", num_replicas=2, out_dir=tmp_path, chunk_rows=16)
    sizes = []
    original = sim._request_sink.write
    sim._request_sink.write = lambda frame: (sizes.append(len(frame)), original(frame))[1]
    sim.run()
    assert max(sizes) == 16 and sum(sizes) == 200
    assert all(len(r.engine.metrics._requests) == 0 for r in sim.replicas)


def test_heterogeneous_replicas_and_per_replica_rejections():
    w = workload(n=300, rate=60.0)
    small = dataclasses.replace(CONFIG, accelerator="a100-80gb", max_prefill_length=1024)
    result = simulate_cluster([CONFIG, small], w, "round-robin")
    per = result.replicas
    assert per["accelerator"].tolist() == ["h100-80gb", "a100-80gb"]
    req = result.requests()
    long_on_small = req[(req["replica"] == 1) & (req["num_prompt_tokens"] > 1024)]
    assert len(long_on_small) and (long_on_small["finish_reason"] == "rejected").all()
    assert per.loc[0, "rejected"] == 0 and per.loc[1, "rejected"] == len(long_on_small)
    assert per.loc[1, "tpot_p50"] > per.loc[0, "tpot_p50"]  # slower HBM
    with pytest.raises(ValueError, match="2 replica configs given for 3 replicas"):
        simulate_cluster([CONFIG, small], w, num_replicas=3)


def test_prefix_affinity_without_keys_notes_the_round_robin_fallback():
    w = workload(n=50)
    result = simulate_cluster(CONFIG, w, "prefix-affinity", num_replicas=2)
    assert any("fell back to round-robin" in note for note in result.notes)
    assert result.replicas["requests"].tolist() == [25, 25]
