"""``odrive compare A.json B.json``: two ``results.json`` files side by side (odrive sim, odrive bench, or
``vllm bench serve --save-result``), every metric both have, with B's relative difference from A."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from odrive.bench.results import ResultFileError, format_value, metric_keys, read_results


def relative_error(a: Any, b: Any) -> float:
    """(b - a) / |a|; NaN where either is missing or a is 0 (and b is not)."""
    if not isinstance(a, int | float) or not isinstance(b, int | float) or isinstance(a, bool):
        return math.nan
    if a == 0:
        return 0.0 if b == 0 else math.nan
    return (b - a) / abs(a)


def comparison(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, Any, Any, float]]:
    """(metric, A's value, B's value, relative error) for every metric in both, in display order."""
    keys = [k for k in metric_keys(a) if k in b]
    return [(k, a[k], b[k], relative_error(a[k], b[k])) for k in keys]


def format_comparison(a: dict[str, Any], b: dict[str, Any], label_a: str, label_b: str) -> str:
    rows = comparison(a, b)
    width = max([len(k) for k, *_ in rows] + [6]) + 2
    head = f"{'metric':<{width}}{label_a:>16}{label_b:>16}{'B vs A':>10}"
    lines = [head, "-" * len(head)]
    for key, x, y, err in rows:
        rel = "-" if math.isnan(err) else f"{100 * err:+.1f}%"
        lines.append(f"{key:<{width}}{format_value(x):>16}{format_value(y):>16}{rel:>10}")
    return "\n".join(lines)


def label(result: dict[str, Any], path: Path) -> str:
    return str(result.get("backend") or path.parent.name or path.stem)[:15]


def run(args: argparse.Namespace) -> int:
    a, b = read_results(args.a), read_results(args.b)
    if not comparison(a, b):
        raise ResultFileError(f"{args.a} and {args.b} have no metric in common")
    print(f"A: {args.a} ({a.get('backend', '?')}, {a.get('workload', a.get('model_id', ''))})")
    print(f"B: {args.b} ({b.get('backend', '?')}, {b.get('workload', b.get('model_id', ''))})")
    print(format_comparison(a, b, "A: " + label(a, args.a), "B: " + label(b, args.b)))
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``odrive compare``."""
    parser = sub.add_parser("compare", help="two results.json files side by side, with relative errors",
                            description=__doc__)  # fmt: skip
    parser.add_argument("a", type=Path, help="results.json (the reference)")
    parser.add_argument("b", type=Path, help="results.json compared with it")
    parser.set_defaults(run=run)
