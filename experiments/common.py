"""Shared pieces of the experiment scripts: CLI flags, trace paths, registry look-ups, figure helpers."""

from __future__ import annotations

import argparse
import inspect
import itertools
import json
import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import matplotlib.lines
import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np
import pandas as pd

from odrive.allocators import ALLOCATORS
from odrive.cli_errors import cli_main
from odrive.errors import RunError
from odrive.schedulers import SCHEDULERS
from sim.sweep.grid import config_fields

REPO_ROOT = Path(__file__).resolve().parents[1]
TRACES = {
    "conversation": REPO_ROOT / "data" / "traces" / "azure_conv_2023.csv",
    "code": REPO_ROOT / "data" / "traces" / "azure_code_2023.csv",
}
DEFAULT_ALLOCATORS = ("free-list",)  # registered today; others join when registered
ALLOCATOR_KWARGS_FIELD = "allocator_kwargs"  # the SimConfig field other policies' options would travel in


def trace_spec(trace: str, **options: Any) -> str:
    """``trace:PATH?k=v`` for a named Azure trace (absolute path, so any working directory works)."""
    query = "&".join(f"{k}={v}" for k, v in options.items() if v is not None)
    return f"trace:{TRACES[trace]}" + (f"?{query}" if query else "")


def empirical_poisson_spec(trace: str, rate: float | str, n: int) -> str:
    """Poisson arrivals at ``rate`` with prompt/output lengths resampled from a trace."""
    path = TRACES[trace]
    return f"poisson:rate={rate},n={n},prompt=empirical({path},prompt),output=empirical({path},output)"


def add_common_arguments(p: argparse.ArgumentParser, name: str) -> None:
    p.add_argument("--full", action="store_true", help="the full-size experiment (minutes) instead of the quick one")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "results" / name, help="output folder")
    p.add_argument("--workers", type=int, default=None, help="local worker processes (default: all cores)")
    p.add_argument("--scheduler-address", default=None, help="run the sweep on this Dask scheduler")
    p.add_argument("--no-cache", action="store_true", help="re-simulate every run")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--publish", type=Path, default=None, help="also copy the headline figure into this folder")
    p.add_argument("--replot", action="store_true", help="redraw the figure from OUT's saved table; simulate nothing")


def sweep_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """``run_sweep`` options from the common flags (cache under ``OUT/cache``)."""
    return {
        "cache_dir": Path(args.out) / "cache", "use_cache": not args.no_cache, "workers": args.workers,
        "scheduler_address": args.scheduler_address, "progress": not args.no_progress,
    }  # fmt: skip


_NOTED: set[str] = set()


def note(message: str) -> None:
    """Print ``note: message`` once per process."""
    if message not in _NOTED:
        _NOTED.add(message)
        print(f"note: {message}")


def registered(kind: str, wanted: Iterable[str] | None) -> list[str]:
    """The wanted allocator/scheduler names that are registered (all registered ones if None); prints a note for
    each one that is not."""
    registry = {"allocator": ALLOCATORS, "scheduler": SCHEDULERS}[kind]
    names = registry.names()
    if wanted is None:
        return names
    found = []
    for name in wanted:
        if name in names:
            found.append(name)
        else:
            note(f"{kind} {name!r} is not registered; skipped (registered: {', '.join(names)})")
    return found


def accepts(factory: Any, parameter: str) -> bool:
    """Whether a registered factory (class or function) takes ``parameter``."""
    try:
        return parameter in inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False


def has_config_field(name: str) -> bool:
    return name in config_fields()


def allocator_entries(names: Sequence[str], options: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Grid overrides, one per allocator variant. ``options[name] = {kwarg: value or [values]}``: the kwargs
    the allocator accepts are passed (a list gives one variant per value, several lists their product) when
    SimConfig can carry allocator kwargs; otherwise the allocator runs with its defaults (with a note)."""
    entries: list[dict[str, Any]] = []
    for name in names:
        wanted = {k: v for k, v in options.get(name, {}).items() if accepts(ALLOCATORS.get(name), k)}
        if wanted and not has_config_field(ALLOCATOR_KWARGS_FIELD):
            note(f"SimConfig has no {ALLOCATOR_KWARGS_FIELD!r} field yet; {name} runs with its defaults")
            wanted = {}
        if not wanted:
            entries.append({"allocator": name})
            continue
        keys = list(wanted)
        axes = [v if isinstance(v, list) else [v] for v in wanted.values()]
        for combo in itertools.product(*axes):
            entries.append({"allocator": name, ALLOCATOR_KWARGS_FIELD: dict(zip(keys, combo, strict=True))})
    return entries


def policy_label(
    row: pd.Series, column: str = "allocator", kwargs_column: str = ALLOCATOR_KWARGS_FIELD, hide: Sequence[str] = ()
) -> str:
    """``free-list`` or ``contiguous (reservation=pow2)``: a policy name with its options (except ``hide``)."""
    raw = row.get(kwargs_column, "")
    options = json.loads(raw) if isinstance(raw, str) and raw.startswith("{") else {}
    extra = ", ".join(f"{k}={v}" for k, v in options.items() if k not in hide)
    return f"{row[column]} ({extra})" if extra else str(row[column])


class ExperimentError(RunError, RuntimeError):
    """An experiment that produced nothing to report (every run failed)."""


def ok_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The runs that succeeded; notes each failure and raises ExperimentError if none succeeded."""
    bad = table[table["status"] != "ok"]
    for _, row in bad.iterrows():
        note(
            f"run {row['run_id']} ({row['allocator']}, {row['scheduler']}, page {row['page_size']}) failed: "
            f"{row['error']}"
        )
    if len(bad) == len(table):
        raise ExperimentError(f"all {len(table)} runs failed; first error: {bad['error'].iloc[0] if len(bad) else '-'}")
    return table[table["status"] == "ok"].copy()


def binned(steps: pd.DataFrame, column: str | pd.Series, bins: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Duration-weighted mean of a step column over equal simulated-time bins (steps vary in length)."""
    t = steps["time"].to_numpy(dtype=float)
    if not len(t):
        return np.array([]), np.array([])
    values = (steps[column] if isinstance(column, str) else column).to_numpy(dtype=float)
    edges = np.linspace(t.min(), float((steps["time"] + steps["duration"]).max()), bins + 1)
    idx = np.clip(np.searchsorted(edges, t, side="right") - 1, 0, bins - 1)
    w = steps["duration"].to_numpy(dtype=float)
    num = np.bincount(idx, weights=values * w, minlength=bins)
    den = np.bincount(idx, weights=w, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return 0.5 * (edges[1:] + edges[:-1]), num / den


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")


def policy_styles(policies: Sequence[str]) -> dict[str, dict[str, Any]]:
    """One colour and marker per policy, stable for a given order (hollow markers so overlaps stay visible)."""
    return {
        p: {"color": plt.cm.tab10(i % 10), "marker": MARKERS[i % len(MARKERS)], "markerfacecolor": "none",
            "markersize": 8 - 1.2 * (i % 3)}
        for i, p in enumerate(policies)
    }  # fmt: skip


def log_ticks(ax: plt.Axes, values: Iterable[float], axis: str = "x") -> None:
    """A log axis with ticks at exactly ``values``, labelled plainly (``4``, ``0.5``, not ``4 x 10^0``)."""
    ticks = sorted({float(v) for v in values})
    getattr(ax, f"set_{axis}scale")("log")
    getattr(ax, f"set_{axis}ticks")(ticks, [f"{t:g}" for t in ticks])
    getattr(ax, f"{axis}axis").set_minor_locator(matplotlib.ticker.NullLocator())


def plain_log_labels(ax: plt.Axes, axis: str = "y") -> None:
    """Label a log axis ``0.1, 0.2, 0.5, 1, 2, 5`` instead of ``10^-1, 2 x 10^-1``."""
    target = getattr(ax, f"{axis}axis")
    target.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    target.set_minor_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "25" else ""))


def series_legend(fig: plt.Figure, styles: dict[str, dict[str, Any]], extra: Sequence[tuple[str, dict]] = ()) -> None:
    """One figure-level legend below the panels: a colour/marker per series, plus ``(label, line style)`` extras."""
    handles = [matplotlib.lines.Line2D([], [], label=name, **style) for name, style in styles.items()]
    handles += [matplotlib.lines.Line2D([], [], label=label, **style) for label, style in extra]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 5), fontsize=9, frameon=False)


def save_figure(fig: plt.Figure, path: Path, publish: Path | None = None) -> Path:
    """Save (and optionally copy into ``publish``) a figure, then close it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    if publish is not None:
        publish.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, publish / path.name)
    return path


def write_table(table: pd.DataFrame, path: Path) -> Path:
    """A tidy CSV (and a Parquet twin when pyarrow is present)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, index=False)
    try:
        table.to_parquet(path.with_suffix(".parquet"), index=False)
    except ImportError:  # pragma: no cover
        pass
    return path


def read_table(path: Path) -> pd.DataFrame:
    """A table an earlier run wrote (for ``--replot``); a clear error if there is none."""
    if not path.is_file():
        raise ExperimentError(f"{path} does not exist: run the experiment without --replot first")
    return pd.read_csv(path)


def print_table(table: pd.DataFrame, title: str) -> None:
    with pd.option_context("display.width", 200, "display.max_columns", 40):
        print(f"\n{title}\n{table.to_string(index=False, float_format=lambda v: f'{v:.4g}')}")


def experiment_parser(name: str, doc: str | None) -> argparse.ArgumentParser:
    """The parser of ``python -m experiments.NAME`` (its docstring as the help) with the common flags."""
    from odrive.cli_errors import CLIParser

    p = CLIParser(prog=f"python -m experiments.{name}", description=doc,
                  formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    add_common_arguments(p, name)
    return p


def print_report(table: pd.DataFrame, title: str, *written: Path) -> None:
    """An experiment's closing words: ``table`` under ``title``, then the files it wrote."""
    print_table(table, title)
    print(f"\nwrote {', '.join(str(w) for w in written)}")


def table_experiment(
    args: argparse.Namespace, name: str, columns: Sequence[str],
    compute: Callable[[argparse.Namespace], pd.DataFrame],
    report: Callable[[pd.DataFrame, argparse.Namespace], pd.DataFrame],
) -> pd.DataFrame:  # fmt: skip
    """The run every one-table experiment shares: with ``--replot``, ``report`` the table saved in ``OUT/NAME.csv``;
    else ``compute`` the table, keep its ``columns`` (those it has, in that order), write it there and ``report``
    it. Returns what ``report`` returns (the table)."""
    path = Path(args.out) / f"{name}.csv"
    if args.replot:
        return report(read_table(path), args)
    table = compute(args)
    summary = table[[c for c in columns if c in table.columns]]
    write_table(summary, path)
    return report(summary, args)


def experiment_main(
    prog: str, build_parser: Callable[[], argparse.ArgumentParser], run: Callable[[argparse.Namespace], Any]
) -> Callable[[list[str] | None], int]:
    """The ``main(argv) -> int`` every experiment script ends with: parse, ``run``, exit with the status ``run``
    returns when it is an int (else 0); user errors and failed runs become one line on stderr and their status
    (``odrive.cli_errors.cli_main``)."""

    @cli_main(prog)
    def main(argv: list[str] | None = None) -> int:
        status = run(build_parser().parse_args(argv))
        return int(status) if isinstance(status, int) else 0

    return main


def results_dir(name: str) -> Path:
    """Where notebooks look for an experiment's output: ``$ODRIVE_RESULTS/NAME`` or ``results/NAME``."""
    root = os.environ.get("ODRIVE_RESULTS")
    return (Path(root) if root else REPO_ROOT / "results") / name
