"""experiments.preemption: the quick default runs; memory pressure causes preemptions that cost throughput."""

from __future__ import annotations

import pandas as pd
import pytest

from experiments import preemption


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    out = tmp_path_factory.mktemp("preemption")
    assert preemption.main(["--out", str(out), "--workers", "1", "--no-progress"]) == 0
    assert (out / "preemption.png").is_file()
    return pd.read_csv(out / "preemption.csv")


def test_columns_and_grid(table: pd.DataFrame) -> None:
    assert {"preemption_mode", "page_size", "kv_capacity_tokens", "pressure", "preemptions", "preempted_fraction",
            "recomputed_fraction", "relative_throughput", "e2e_p99"} <= set(table.columns)  # fmt: skip
    assert set(table["page_size"]) == set(preemption.QUICK_PAGE_SIZES)
    assert set(table["preemption_mode"]) == set(preemption.preemption_modes())
    constrained = table[table["pressure"] == "constrained"]
    assert set(constrained["kv_capacity_tokens"]) == set(preemption.QUICK_CAPACITIES)


def test_pressure_costs_throughput(table: pd.DataFrame) -> None:
    free = table[table["pressure"] == "unconstrained"]
    assert (free["relative_throughput"] == 1).all()
    tight = table[table["kv_capacity_tokens"] == min(preemption.QUICK_CAPACITIES)]
    assert (tight["preemptions"] > 0).all() and (tight["relative_throughput"] < 1).all()
    assert table["preempted_fraction"].between(0, 1).all()
    recompute = tight[tight["preemption_mode"] == "recompute"]
    assert (recompute["recomputed_fraction"] > 0).all()  # recompute preemption prefills evicted tokens again
    swap = tight[tight["preemption_mode"] == "swap"]
    assert (swap["recomputed_fraction"] < recompute["recomputed_fraction"].min()).all()
