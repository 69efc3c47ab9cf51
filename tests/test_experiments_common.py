"""experiments.common: registry look-ups that skip what is not registered, policy variants and labels."""

from __future__ import annotations

import argparse

import pandas as pd
import pytest

from experiments import common


def test_registered_skips_unknown_names_with_a_note(capsys: pytest.CaptureFixture[str]) -> None:
    assert common.registered("allocator", ["free-list", "not-yet-written"]) == ["free-list"]
    assert "'not-yet-written' is not registered; skipped" in capsys.readouterr().out
    assert "fcfs" in common.registered("scheduler", None)


def test_allocator_entries_follow_what_exists() -> None:
    entries = common.allocator_entries(["free-list"], {"free-list": {"no_such_kwarg": [1, 2]}})
    assert entries == [{"allocator": "free-list"}]  # an option the allocator does not take is dropped


def test_policy_label_and_trace_spec() -> None:
    row = pd.Series({"allocator": "contiguous", "allocator_kwargs": '{"reservation": "pow2", "reserve_tokens": 8}'})
    assert common.policy_label(row, hide=("reserve_tokens",)) == "contiguous (reservation=pow2)"
    assert common.policy_label(pd.Series({"allocator": "free-list", "allocator_kwargs": ""})) == "free-list"
    spec = common.trace_spec("code", time_scale=0.5, max_requests=None)
    assert spec.startswith("trace:") and spec.endswith("azure_code_2023.csv?time_scale=0.5")


def test_replot_without_a_saved_table_says_so(tmp_path, capsys) -> None:
    from experiments import preemption

    assert preemption.main(["--out", str(tmp_path), "--replot"]) == 1  # one line on stderr, exit status 1
    assert capsys.readouterr().err.endswith("run the experiment without --replot first\n")
    with pytest.raises(common.ExperimentError, match="without --replot first"):
        preemption.main(["--out", str(tmp_path), "--replot", "--debug"])


def test_table_experiment_writes_the_chosen_columns_and_replots_them(tmp_path) -> None:
    reported = []

    def report(table, args):  # noqa: ANN001, ANN202
        reported.append(table)
        return table

    args = argparse.Namespace(out=tmp_path, replot=False)
    made = common.table_experiment(args, "demo", ["b", "a", "missing"],
                                   lambda _: pd.DataFrame({"a": [1, 2], "b": [3, 4], "c": [5, 6]}), report)  # fmt: skip
    assert list(made.columns) == ["b", "a"] and (tmp_path / "demo.csv").is_file()
    args.replot = True
    again = common.table_experiment(args, "demo", ["b", "a"], lambda _: 1 / 0, report)
    pd.testing.assert_frame_equal(again, made)
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int)
    main = common.experiment_main("demo", lambda: parser, lambda a: reported.append(a.n))
    assert main(["--n", "3"]) == 0 and reported[-1] == 3
