"""Capacity search: the highest rate a configuration serves within the SLO, found by bisection, ranked by cost."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from odrive.errors import ConfigError
from sim.cluster.kv_link import KVLinkConfig
from sim.cluster.spec import ClusterSpec
from sim.config import SimConfig
from sim.search import SLO, Evaluator, SearchSettings, at_rate, expand_search_grid, find_capacity, run_search
from sim.search.capacity import Evaluation, native_rate, search_capacity
from sim.search.cli import main as search_main
from sim.sweep.grid import GridError
from sim.workloads import parse_workload

TRACE = "data/traces/azure_conv_2023.csv"
WORKLOAD = f"poisson:rate=1,n=300,prompt=empirical({TRACE},prompt),output=empirical({TRACE},output)"
SMALL = WORKLOAD.replace("n=300", "n=120")
CFG = SimConfig(model="llama-3-8b", record_steps=False)


def meets(spec: ClusterSpec, slo: SLO, rate: float) -> bool:
    result = spec.simulate(at_rate(parse_workload(WORKLOAD, seed=0), rate))
    requests = result.requests(["status", "ttft", "tpot"]) if slo.attainment is not None else None
    return slo.check(result.summary, requests)[0]


@pytest.mark.parametrize(
    ("spec", "slo"),
    [
        (ClusterSpec(CFG, replicas=1), SLO.parse("ttft_p99=1000,tpot_p99=40")),
        (ClusterSpec(CFG, replicas=2, prefill_replicas=1, link=KVLinkConfig(gbps=100)), SLO.parse("ttft_p99=1500")),
        (ClusterSpec(CFG, replicas=1), SLO.parse("ttft=500,tpot=30", attainment=0.9)),
    ],
)
def test_capacity_meets_the_slo_and_ten_percent_more_does_not(spec: ClusterSpec, slo: SLO) -> None:
    settings = SearchSettings(tolerance=0.05)
    found, simulated = search_capacity(spec, WORKLOAD, slo, settings)
    assert 0 < found.capacity < found.fails_at <= found.capacity * 1.05 * (1 + 1e-12)
    assert simulated == len(found.evaluations) >= 4
    assert any(e.met for e in found.evaluations) and not all(e.met for e in found.evaluations)
    # Re-simulated from scratch: the answer meets the SLO, 10 % more load does not.
    assert meets(spec, slo, found.capacity)
    assert not meets(spec, slo, 1.1 * found.capacity)


def test_at_rate_keeps_every_length_and_the_arrival_pattern() -> None:
    w = parse_workload(f"trace:{TRACE}?max_requests=500", seed=0)
    fast = at_rate(w, 50.0)
    assert native_rate(fast) == pytest.approx(50.0, rel=1e-12)
    np.testing.assert_array_equal(fast.prompt_lens, w.prompt_lens)
    np.testing.assert_array_equal(fast.output_lens, w.output_lens)
    gaps, scaled = np.diff(w.arrival_times), np.diff(fast.arrival_times)
    np.testing.assert_allclose(scaled, gaps * native_rate(w) / 50.0, rtol=1e-9, atol=1e-12)  # same shape, faster
    with pytest.raises(ConfigError, match=">= 2 requests"):
        native_rate(w.slice(1))


@pytest.mark.parametrize("threshold", [0.0005, 0.37, 3.0, 1234.5, 2e6])
def test_bisection_brackets_the_threshold_within_tolerance(threshold: float) -> None:
    settings = SearchSettings(tolerance=0.02, min_rate=1e-3, max_rate=1e5)
    found = find_capacity(lambda r: Evaluation(r, r <= threshold, {}), settings, start_rate=4.0)
    if threshold < settings.min_rate:
        assert found.capacity == 0.0
    elif threshold >= settings.max_rate:
        assert found.capacity == settings.max_rate and math.isinf(found.fails_at)
    else:
        assert found.capacity <= threshold < found.fails_at <= found.capacity * 1.02 * (1 + 1e-12)
    assert len(found.evaluations) < 40


def test_slo_parsing_and_errors() -> None:
    slo = SLO.parse("ttft_p99=500, tpot_p90=25")
    assert slo.bounds == (("ttft_p99", 0.5), ("tpot_p90", 0.025))
    assert slo.check(pd.Series({"ttft_p99": 0.4, "tpot_p90": 0.02}))[0]
    assert not slo.check(pd.Series({"ttft_p99": 0.4, "tpot_p90": math.nan}))[0]  # NaN never meets an SLO
    with pytest.raises(ConfigError, match="unknown SLO statistic 'ttft_p95'"):
        SLO.parse("ttft_p95=500")
    with pytest.raises(ConfigError, match="NAME=MILLISECONDS"):
        SLO.parse("ttft_p99:500")
    with pytest.raises(ConfigError, match="per-request metric 'ttft_p99'"):
        SLO.parse("ttft_p99=500", attainment=0.9)
    with pytest.raises(ConfigError, match="attainment"):
        SLO.parse("ttft=500", attainment=1.5)
    per_request = SLO.parse("ttft=100,tpot=10", attainment=0.5)
    requests = pd.DataFrame({"status": ["finished", "finished", "finished", "rejected"], "ttft": [0.05, 0.05, 0.2, 0],
                             "tpot": [0.005, math.nan, 0.005, 0]})  # fmt: skip
    assert per_request.attained(requests) == 0.5  # a one-token request has no TPOT; a rejected one meets nothing


def test_search_grid_expands_clusters_pools_and_links() -> None:
    specs = expand_search_grid(
        {"accelerator": ["h100-80gb", "a100-80gb"], "replicas": 4, "prefill_replicas": [0, 1],
         "decode.tensor_parallel_size": 2, "kv_link_gbps": 200, "kv_link_latency_us": 5},
        base={"model": "llama-3-8b"},
    )  # fmt: skip
    assert len(specs) == 4
    colocated, split = specs[0], specs[1]
    assert colocated.split() == "colocated" and colocated.accelerators == 4
    assert split.split() == "1:3" and split.pool("decode").tp == 2 and split.accelerators == 1 + 3 * 2
    assert split.link == KVLinkConfig(gbps=200, latency_s=5e-6)
    assert split.replica.model == "llama-3-8b" and specs[2].replica.accelerator == "a100-80gb"
    with pytest.raises(GridError, match="did you mean 'scheduler'"):
        expand_search_grid({"schedulr": ["fcfs"]})
    with pytest.raises(GridError, match="no decode replica"):
        expand_search_grid({"replicas": 2, "prefill_replicas": 2})


def test_search_ranks_by_cost_and_caches_every_run(tmp_path) -> None:
    a100 = SimConfig(model="llama-3-8b", accelerator="a100-80gb", record_steps=False)
    specs = [ClusterSpec(CFG, replicas=1), ClusterSpec(a100, replicas=1)]
    slo = SLO.parse("ttft_p99=1000,tpot_p99=60")
    costs = {"h100-80gb": 10.0, "a100-80gb": 1.0}
    table = run_search(specs, SMALL, slo, costs=costs, out=tmp_path, workers=1, progress=False)
    assert (table["status"] == "ok").all() and table["rank"].tolist() == [1, 2]
    assert table["requests_per_dollar"].is_monotonic_decreasing
    assert table.loc[0, "accelerator"] == "a100-80gb"  # a tenth of the price beats the H100's higher capacity
    h100 = table[table["accelerator"] == "h100-80gb"].iloc[0]
    assert h100["requests_per_dollar"] == pytest.approx(h100["capacity_rps"] * 3600 / 10.0)
    assert (tmp_path / "search.csv").is_file()
    again = run_search(specs, SMALL, slo, costs=costs, out=tmp_path, workers=1, progress=False)
    assert (again["runs_simulated"] == 0).all()  # every run came from the cache
    pd.testing.assert_series_equal(again["capacity_rps"], table["capacity_rps"])
    with pytest.raises(ConfigError, match="no price for a100-80gb"):
        run_search(specs, SMALL, slo, costs={"h100-80gb": 1.0}, workers=1, progress=False)
    evaluate = Evaluator(specs[0], WORKLOAD, slo)
    assert evaluate.key(2.0) != evaluate.key(2.0000001)
    assert evaluate.key(2.0) == Evaluator(specs[0], WORKLOAD, slo).key(2)


def test_search_cli(tmp_path, capsys) -> None:
    grid = tmp_path / "grid.yaml"
    grid.write_text(f'workload: "{SMALL}"\nbase: {{model: llama-3-8b}}\ngrid:\n  replicas: [1]\n'
                    "  prefill_replicas: [0]\n")  # fmt: skip
    out = tmp_path / "out"
    args = ["--grid", str(grid), "--slo", "ttft_p99=1000,tpot_p99=60", "--out", str(out), "--workers", "1",
            "--no-progress"]  # fmt: skip
    assert search_main([*args, "--cost", "h100-80gb=3"]) == 0
    printed = capsys.readouterr().out
    assert "requests_per_dollar" in printed and "colocated" in printed
    assert pd.read_csv(out / "search.csv")["capacity_rps"].iloc[0] > 0
    assert search_main([*args[:4], "--slo", "ttft_p99=abc"]) == 2
    assert "NAME=MILLISECONDS" in capsys.readouterr().err
    grid.write_text("grid:\n  replicas: [1]\n")
    assert search_main(args) == 2
    assert "names no workload" in capsys.readouterr().err


def test_search_runs_on_a_dask_cluster(tmp_path) -> None:
    distributed = pytest.importorskip("distributed")
    specs = [ClusterSpec(CFG, replicas=1)]
    slo = SLO.parse("ttft_p99=1000")
    tiny = WORKLOAD.replace("n=300", "n=60")
    local = run_search(specs, tiny, slo, workers=1, progress=False)
    cluster = distributed.LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, protocol="tcp", host="127.0.0.1", dashboard_address=None
    )
    with cluster, distributed.Client(cluster) as client:
        on_dask = run_search(specs, tiny, slo, client=client, cache_dir=tmp_path, progress=False)
    assert on_dask["runs_simulated"].iloc[0] > 0  # it really ran there
    assert on_dask["capacity_rps"].iloc[0] == local["capacity_rps"].iloc[0]
