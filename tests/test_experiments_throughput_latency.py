"""experiments.throughput_latency: the quick default runs; throughput, goodput and percentiles are sane."""

from __future__ import annotations

import pandas as pd
import pytest

from experiments import throughput_latency


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    out = tmp_path_factory.mktemp("throughput_latency")
    assert throughput_latency.main(["--out", str(out), "--workers", "1", "--no-progress"]) == 0
    assert (out / "throughput_latency.png").stat().st_size > 10_000
    return pd.read_csv(out / "throughput_latency.csv")


def test_columns_and_grid(table: pd.DataFrame) -> None:
    assert {"accelerator", "scheduler", "rate", "request_throughput", "output_token_throughput", "goodput",
            "slo_attainment", *throughput_latency.LATENCIES} <= set(table.columns)  # fmt: skip
    assert set(table["accelerator"]) == set(throughput_latency.DEFAULT_ACCELERATORS)
    assert "fcfs" in set(table["scheduler"])
    fcfs = table[table["scheduler"] == "fcfs"]
    assert sorted(fcfs["rate"].unique()) == list(throughput_latency.QUICK_RATES)


def test_values_are_sane(table: pd.DataFrame) -> None:
    assert (table["goodput"] <= table["request_throughput"] + 1e-9).all()
    assert table["slo_attainment"].between(0, 1).all()
    for metric in ("ttft", "tpot", "e2e"):
        p50, p90, p99 = (table[f"{metric}_{q}"] for q in ("p50", "p90", "p99"))
        assert (p50 > 0).all() and (p50 <= p90).all() and (p90 <= p99).all()
    for _, g in table[table["scheduler"] == "fcfs"].groupby("accelerator"):
        g = g.sort_values("rate")
        assert g["request_throughput"].iloc[1] > g["request_throughput"].iloc[0]  # below saturation it tracks load
        assert g["ttft_p99"].iloc[-1] >= g["ttft_p99"].iloc[0]  # latency grows with load
    # The H100 is faster than the A100 at the highest load.
    top = table[(table["scheduler"] == "fcfs") & (table["rate"] == max(throughput_latency.QUICK_RATES))]
    by_acc = top.set_index("accelerator")["request_throughput"]
    assert by_acc["h100-80gb"] > by_acc["a100-80gb"]
