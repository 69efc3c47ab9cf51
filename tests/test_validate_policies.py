"""experiments.validate_policies: one tidy row per policy x workload x load x seed from real runs, and the README's
table generated from the committed CSV (no hand-copied numbers)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from experiments import validate_policies as vp
from experiments.validate_sim import TINY, UNPINNED_PROFILE


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    base = replace(
        TINY, profile=str(UNPINNED_PROFILE),  # JAX already runs in this process: no pinning
        loads=(0.5, 1.3), seeds=(0,), repeats=2, num_requests=12, max_prefill_length=128, max_length=256,
        max_concurrent_decodes=6, num_pages=64, prompt=(16, 96), output=(8, 24), user=(8, 24), system_prompt=32,
        turns=2, closed_requests=10, closed_num_pages=20, probe_requests=6,
    )  # fmt: skip
    return vp.run(base, ["cache-aware+prefix-cache"], Path("/nonexistent-never-written"), log=lambda _: None)


def test_one_row_per_workload_load_and_seed_with_every_column(table: pd.DataFrame) -> None:
    assert list(table.columns) == vp.COLUMNS
    assert sorted(table["load"]) == [0.5, 1.3] and set(table["seed"]) == {0}
    row = table.iloc[0]
    assert (row.policy, row.scheduler, row.allocator, row.preemption_mode, row.workload) == (
        "cache-aware+prefix-cache", "cache-aware", "prefix-cache", "recompute", "multi_turn",
    )  # fmt: skip
    assert table["plans_identical"].all()  # its closed workload decided step for step as on the real engine
    errors = table[[c for c in vp.COLUMNS if c.endswith("_pct") or "_pct_" in c]]
    assert np.isfinite(errors.to_numpy(float)).all()  # two real runs: a noise floor too
    assert (errors.drop(columns="throughput_error_pct") >= 0).all().all()


def test_summary_markdown_and_readme_rewrite(table: pd.DataFrame, tmp_path: Path) -> None:
    text = vp.markdown(table)
    assert text.count("| cache-aware+prefix-cache | multi_turn |") == 2  # below saturation, overload
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{vp.MARKERS[0]}\nold table\n{vp.MARKERS[1]}\noutro\n")
    assert vp.write_readme(table, readme)
    assert readme.read_text() == f"intro\n{vp.MARKERS[0]}\n{text}\n{vp.MARKERS[1]}\noutro\n"
    plain = tmp_path / "plain.md"
    plain.write_text("no markers\n")
    assert not vp.write_readme(table, plain) and plain.read_text() == "no markers\n"


def test_the_readme_table_is_generated_from_the_committed_csv() -> None:
    committed = pd.read_csv(vp.TABLE)
    assert set(committed.columns) >= set(vp.COLUMNS)
    policies = set(committed["policy"])
    assert {"fcfs", "sarathi", "decode-priority", "priority", "sjf-oracle", "cache-aware+prefix-cache",
            "fcfs+swap"} <= policies  # fmt: skip
    assert vp.markdown(committed) in vp.README.read_text()


def test_unknown_policy_is_a_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        vp.main(["--policies", "fcfs,bogus"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "unknown policy bogus; known: fcfs, sarathi" in err and "Traceback" not in err
