"""The sweep runner: grid expansion, local and Dask execution, caching, determinism, the CLI."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from sim.config import SimConfig
from sim.sweep import GridError, ResultCache, RunPoint, expand_grid, run_key, run_sweep
from sim.sweep.cli import main as sweep_main

WORKLOAD = "poisson:rate={rate},n=30,prompt=uniform(16,256),output=uniform(4,64)"
GRID = {"workload": WORKLOAD, "rate": [4, 16], "page_size": [16, 64]}
VOLATILE = ["wall_s", "cached"]


def metrics_equal(a: pd.DataFrame, b: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(a.drop(columns=VOLATILE), b.drop(columns=VOLATILE))


def test_expand_grid_product_parameters_and_order() -> None:
    grid = expand_grid({**GRID, "prefill_lengths": [16, 32, 16384], "latency_kwargs": {"b": 2, "a": 1}})
    assert len(grid) == 4 and grid.param_names == ["rate"]
    first = grid.points[0]
    assert first.workload == WORKLOAD.format(rate=4) and first.params == (("rate", 4),)
    assert first.config.page_size == 16 and first.config.prefill_lengths == (16, 32, 16384)
    assert first.config.latency_kwargs == (("a", 1), ("b", 2))
    assert [p.config.page_size for p in grid.points] == [16, 64, 16, 64]  # first key varies slowest
    union = expand_grid([GRID, {**GRID, "rate": 4}])  # the second entry repeats two points: dropped
    assert len(union) == 4


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        ({"workload": WORKLOAD, "rate": [1], "page_sise": [16]}, "did you mean 'page_size'"),
        ({"workload": WORKLOAD}, r"needs value\(s\) for rate"),
        ({"page_size": [16]}, "no 'workload' key"),
        ({"workload": WORKLOAD, "rate": []}, "empty list"),
    ],
)
def test_expand_grid_rejects_bad_grids(grid: dict, message: str) -> None:
    with pytest.raises(GridError, match=message):
        expand_grid(grid)


def test_load_grid_yaml(tmp_path: Path) -> None:
    pytest.importorskip("yaml")
    from sim.sweep import load_grid

    path = tmp_path / "grid.yaml"
    path.write_text(
        "base: {accelerator: a100-80gb}\nimports: [json]\n"
        "grid:\n  - {workload: 'poisson:rate={rate},n=5,prompt=8,output=4', rate: [1, 2]}\n"
        "  - {workload: 'poisson:rate=3,n=5,prompt=8,output=4', allocator: free-list-lifo}\n"
    )
    grid = load_grid(path)
    assert len(grid) == 3 and grid.imports == ("json",)
    assert {p.config.accelerator for p in grid.points} == {"a100-80gb"}
    assert grid.points[2].config.allocator == "free-list-lifo"


def test_run_key_is_stable_and_covers_code_and_trace_content(tmp_path: Path) -> None:
    trace = tmp_path / "t.csv"
    trace.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n0.0,10,5\n")
    point = RunPoint(SimConfig(), f"trace:{trace}")
    key = run_key(point, version="v1")
    assert key == run_key(RunPoint(SimConfig(), f"trace:{trace}"), version="v1")
    assert key != run_key(point, version="v2")
    assert key != run_key(RunPoint(SimConfig(page_size=32), f"trace:{trace}"), version="v1")
    trace.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n0.0,11,5\n")
    assert key != run_key(point, version="v1")


def test_local_sweep_caches_and_is_deterministic(tmp_path: Path) -> None:
    first = run_sweep(GRID, out=tmp_path, workers=2, progress=False, keep_tables=True)
    assert len(first) == 4 and (first["status"] == "ok").all() and not first["cached"].any()
    assert list(first.columns[:3]) == ["run_id", "workload", "rate"]
    assert {"page_size", "scheduler", "request_throughput", "ttft_p99", "kv_waste", "max_running"} <= set(first)
    assert (first["finished"] == 30).all() and first["run_id"].is_unique
    assert (tmp_path / "results.parquet").is_file() and (tmp_path / "results.csv").is_file()
    # Bigger pages waste more of what they allocate.
    by_page = first.groupby("page_size")["kv_waste"].mean()
    assert by_page[64] > by_page[16] >= 0
    requests, steps = ResultCache(tmp_path / "cache").tables(first["run_id"].iloc[0])
    assert len(requests) == 30 and len(steps) > 0

    again = run_sweep(GRID, out=tmp_path, workers=2, progress=False)
    assert again["cached"].all()
    metrics_equal(first, again)
    fresh = run_sweep(GRID, workers=1, progress=False)  # no cache, in this process
    assert not fresh["cached"].any()
    metrics_equal(first, fresh)


def test_failed_runs_are_reported_and_not_cached(tmp_path: Path) -> None:
    grid = {"workload": "poisson:rate=2,n=5,prompt=8,output=4", "allocator": ["free-list", "no-such-allocator"]}
    table = run_sweep(grid, cache_dir=tmp_path, workers=1, progress=False)
    assert list(table["status"]) == ["ok", "error"]
    assert "no-such-allocator" in table["error"].iloc[1]
    again = run_sweep(grid, cache_dir=tmp_path, workers=1, progress=False)
    assert list(again["cached"]) == [True, False]


def test_dask_local_cluster_matches_local(tmp_path: Path) -> None:
    distributed = pytest.importorskip("distributed")
    local = run_sweep(GRID, workers=1, progress=False)
    cluster = distributed.LocalCluster(  # two in-process workers behind a real TCP scheduler on loopback
        n_workers=2, threads_per_worker=1, processes=False, protocol="tcp", host="127.0.0.1", dashboard_address=None
    )
    with cluster:
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
        with distributed.Client(cluster) as client:
            on_dask = run_sweep(GRID, client=client, cache_dir=tmp_path / "a", progress=False)
        by_address = run_sweep(
            GRID, scheduler_address=cluster.scheduler_address, cache_dir=tmp_path / "b", progress=False
        )
    assert not on_dask["cached"].any() and not by_address["cached"].any()  # both really ran on the cluster
    metrics_equal(local, on_dask)
    metrics_equal(local, by_address)


def test_cli_runs_a_yaml_grid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("yaml")
    grid = tmp_path / "grid.yaml"
    grid.write_text(
        "workload: 'poisson:rate={rate},n=10,prompt=32,output=8'\nrate: [1, 2]\n"
        "allocator: [free-list, free-list-lifo]\n"
    )
    assert sweep_main([str(grid), "--out", str(tmp_path / "out"), "--workers", "1", "--no-progress"]) == 0
    table = pd.read_parquet(tmp_path / "out" / "results.parquet")
    assert len(table) == 4 and (table["status"] == "ok").all()
    printed = capsys.readouterr().out
    assert "4 runs" in printed and "free-list-lifo" in printed


def test_example_grid_file_expands() -> None:
    pytest.importorskip("yaml")
    from sim.sweep import load_grid

    grid = load_grid(Path(__file__).resolve().parents[1] / "experiments" / "grids" / "example.yaml")
    assert len(grid) == 8 and grid.param_names == ["rate"]
