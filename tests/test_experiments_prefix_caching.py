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
