"""Benchmark numbers in the README come from the tables the benchmarks wrote (no hand-copied figures)."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_vs_transformers  # noqa: E402


def test_readme_speed_table_is_the_committed_benchmark_run() -> None:
    table = pd.read_csv(ROOT / "docs" / "benchmarks" / "vs_transformers.csv")
    assert list(table["batch"]) == [1, 8, 32]
    readme = (ROOT / "README.md").read_text()
    assert bench_vs_transformers.markdown_table(table) in readme
    row = table.iloc[0]
    assert f"{row.odrive_ttft_ms_best:.0f} ms" in readme and f"{row.hf_ttft_ms_best:.0f} ms" in readme
    assert f"{row.startup_s:.1f} s" in readme
