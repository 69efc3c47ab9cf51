"""experiments.disaggregation: goodput per accelerator of colocated vs prefill:decode splits (a small run)."""

from __future__ import annotations

import pandas as pd

from experiments import disaggregation


def test_goodput_table_figure_and_replot(tmp_path) -> None:
    out = tmp_path / "disaggregation"
    args = ["--out", str(out), "--workers", "1", "--no-progress", "--traces", "conversation", "--requests", "100",
            "--accelerators", "2", "--tpot-slo", "0.05"]  # fmt: skip
    assert disaggregation.main(args) == 0
    table = pd.read_csv(out / "disaggregation.csv")
    assert table["config"].tolist() == ["colocated fcfs", "colocated sarathi", "1:1"]
    assert (table["status"] == "ok").all() and (table["accelerators"] == 2).all()
    assert (table["goodput_per_accelerator"] == table["capacity_rps"] / 2).all()
    assert (table["capacity_rps"] > 0).all() and (table["fails_at_rps"] <= table["capacity_rps"] * 1.05 + 1e-9).all()
    assert (table["at_capacity_attainment"] >= 0.9).all()
    # Disaggregated decode replicas never stall for prefills: their TPOT at capacity beats the colocated ones'.
    split = table[table["config"].str.contains(":")]
    colocated = table[table["config"].str.startswith("colocated")]
    assert split["at_capacity_tpot_p99"].max() < colocated["at_capacity_tpot_p99"].min()
    figure = out / "disaggregation.png"
    assert figure.stat().st_size > 10_000
    figure.unlink()
    assert disaggregation.main([*args, "--replot"]) == 0
    assert figure.is_file()
