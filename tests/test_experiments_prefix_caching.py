"""experiments.prefix_caching: the quick default runs (or notes what is missing and exits 0)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from experiments import prefix_caching
from odrive.allocators import ALLOCATORS


def test_quick_default(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert prefix_caching.main(["--out", str(tmp_path), "--workers", "1", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    if prefix_caching.CACHE_ALLOCATOR not in ALLOCATORS or not prefix_caching.available_workloads():
        assert "note:" in printed and not (tmp_path / "prefix_caching.csv").exists()
        return
    table = pd.read_csv(tmp_path / "prefix_caching.csv")
    assert {"workload_name", "rate", "scheduler", "allocator", "cached_token_fraction", "throughput_gain",
            "ttft_p50_speedup", "output_token_throughput"} <= set(table.columns)  # fmt: skip
    base = table[table["allocator"] == prefix_caching.BASELINE_ALLOCATOR]
    cached = table[table["allocator"] == prefix_caching.CACHE_ALLOCATOR]
    assert len(base) == len(cached) > 0
    assert (base["cached_token_fraction"] == 0).all() and (base["throughput_gain"] == 1).all()
    assert cached["cached_token_fraction"].between(0.3, 1).all()  # shared prompts / repeated turns hit
    assert (cached["ttft_p50_speedup"] > 1).all()  # prefilling fewer tokens answers sooner
    assert (cached["throughput_gain"] > 0.95).all()
    assert (tmp_path / "prefix_caching.png").is_file()


def test_mooncake_study(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from experiments import prefix_caching_mooncake as mooncake

    small = {"requests": 60, "pools": [262_144, 4_194_304], "pages": [64], "replicas": 2}
    monkeypatch.setattr(mooncake, "QUICK", small)
    args = ["--trace", "mooncake", "--out", str(tmp_path), "--workers", "1", "--no-progress"]
    assert prefix_caching.main(args) == 0
    pool, cluster = pd.read_csv(tmp_path / "pool.csv"), pd.read_csv(tmp_path / "cluster.csv")
    cached = pool[pool["allocator"] == "prefix-cache"].sort_values("pool_tokens")
    share = mooncake.implied_share(max_requests=60)
    assert 0 < share < 0.4 and f"{100 * share:.1f} %" in capsys.readouterr().out
    # a bigger pool keeps more of what was shared, up to what the hash ids allow
    assert 0 < cached["cached_token_fraction"].iloc[0] <= cached["cached_token_fraction"].iloc[1] <= share + 1e-9
    assert (pool.loc[pool["allocator"] == "free-list", "cached_token_fraction"] == 0).all()
    assert list(cluster["router"]) == list(mooncake.ROUTERS) and (cluster["finished"] == 60).all()
    assert (tmp_path / "prefix_caching_mooncake.png").is_file()
    assert prefix_caching.main([*args, "--replot"]) == 0  # redraws from the saved tables
