"""The command line: ``odrive sim`` writes its tables, summary and figure."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from odrive.cli import main


def test_odrive_sim_writes_tables_summary_and_figure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    code = main([
        "sim", "--workload", "trace:data/traces/azure_conv_2023.csv?max_requests=150", "--no-progress",
        "--out", str(out), "--page-size", "32",
    ])  # fmt: skip
    assert code == 0
    requests = pd.read_csv(out / "requests.csv")
    assert len(requests) == 150 and (requests["status"] == "finished").all()
    summary = pd.read_csv(out / "summary.csv", index_col=0)["value"]
    assert summary["finished"] == 150 and summary["ttft_p50"] > 0
    assert (out / "steps.csv").stat().st_size > 0
    assert (out / "run.png").read_bytes()[:4] == b"\x89PNG"
    printed = capsys.readouterr().out
    assert "request_throughput" in printed and "page_size=32" in printed


def test_unknown_policy_names_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["sim", "--workload", "poisson:rate=1,n=5,prompt=10,output=5", "--scheduler", "nope", "--no-progress",
            "--out", str(tmp_path)]  # fmt: skip
    assert main(argv) == 2
    assert capsys.readouterr().err == (
        "odrive: error: unknown scheduler 'nope'; registered: cache-aware, decode-priority, fcfs, odriver, priority, "
        "sarathi, sjf, token-budget\n"
    )
    with pytest.raises(KeyError, match="unknown scheduler 'nope'; registered: .*fcfs"):  # --debug: the exception
        main([*argv, "--debug"])


def test_allocator_and_scheduler_options_reach_the_policies(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["sim", "--workload", "poisson:rate=20,n=60,prompt=uniform(50,300),output=uniform(10,100)",
            "--no-progress", "--out", str(out), "--num-pages", "400", "--scheduler", "sarathi",
            "--chunk-size", "64"]  # fmt: skip
    assert main([*args, "--allocator", "contiguous", "--allocator-arg", "reserve_tokens=1024"]) == 0
    max_reserve = pd.read_csv(out / "summary.csv", index_col=0)["value"]["mean_fragmentation"]
    assert main([*args, "--allocator", "contiguous", "--allocator-arg", "reservation=oracle"]) == 0
    oracle = pd.read_csv(out / "summary.csv", index_col=0)["value"]["mean_fragmentation"]
    assert max_reserve > 0.5 > oracle  # reserving 1024 tokens for ~250-token sequences wastes most slots


def test_default_workloads_are_found_from_any_directory() -> None:
    from pathlib import Path

    from sim.cli import DEFAULT_WORKLOAD
    from sim.cluster.cli import DEFAULT_WORKLOAD as CLUSTER_DEFAULT

    for spec in (DEFAULT_WORKLOAD, CLUSTER_DEFAULT):
        path = Path(spec.split(":", 1)[1].split("?")[0])
        assert path.is_absolute() and path.is_file(), spec
