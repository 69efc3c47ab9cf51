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


def test_every_replica_flag_reaches_the_replica_configs():
    import argparse

    from sim.cluster.cli import add_arguments, replica_configs

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args([
        "--replicas", "2", "--scheduler", "sjf", "--scheduler-arg", "predictor=oracle", "--allocator",
        "contiguous", "--allocator-arg", "reservation=pow2", "--preemption-mode", "swap", "--swap-space-gib", "2",
        "--tensor-parallel-size", "2", "--record-steps",
    ])  # fmt: skip
    configs = replica_configs(args)
    assert len(configs) == 2
    c = configs[0]
    assert (c.scheduler, c.allocator, c.preemption_mode, c.swap_space_gib) == ("sjf", "contiguous", "swap", 2.0)
    assert dict(c.scheduler_kwargs) == {"predictor": "oracle"}
    assert dict(c.allocator_kwargs) == {"reservation": "pow2"}
    assert c.tensor_parallel_size == 2 and c.record_steps
