"""``python -m sim.cluster`` end to end on a small workload."""

from __future__ import annotations

import json

import pandas as pd

from sim.cluster.cli import main


def test_cli_writes_tables_figure_and_prints_the_summary(tmp_path, capsys):
    configs = tmp_path / "replicas.json"
    configs.write_text(json.dumps([{"count": 2}, {"accelerator": "a100-80gb", "count": 1}]))
    code = main([
        "--workload", "poisson:rate=30,n=120,prompt=lognormal(500,1,16,4000),output=uniform(8,128)",
        "--replicas", "3", "--router", "least-outstanding", "--replica-configs", str(configs),
        "--out", str(tmp_path / "out"), "--no-progress", "--format", "csv",
    ])  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "simulated_requests_per_wall_s" in out and "per replica:" in out and "a100-80gb" in out
    for name in ("requests.csv", "summary.csv", "replicas.csv", "cluster.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    assert len(pd.read_csv(tmp_path / "out" / "requests.csv")) == 120
    assert pd.read_csv(tmp_path / "out" / "replicas.csv")["accelerator"].tolist() == ["h100-80gb"] * 2 + ["a100-80gb"]
