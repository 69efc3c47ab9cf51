"""``results.json`` with the keys and units of ``vllm bench serve --save-result``, from per-request rows.

Definitions (as vLLM's ``calculate_metrics``): a request *completed* if it finished (failed ones count in
``failed`` only); ``duration`` is the run's span (first arrival to the last request's end); throughputs divide
completed requests / their output tokens / their prompt + output tokens by it. TTFT: arrival to first token;
TPOT: (E2E - TTFT) / (output tokens - 1), over requests with more than one output token; ITL: every gap between
two consecutive output tokens (chunks, for a streaming client) of a completed request, pooled; E2EL: arrival to
the last token. Latencies in milliseconds: ``mean_``, ``median_``, ``std_`` (population) and ``pNN_`` (linear
interpolation) of each. ``request_goodput``: completed requests meeting every SLO given (``ttft:MS``,
``tpot:MS``, ``e2el:MS``; a request with one output token has TPOT 0 there) per second, None without SLOs.
Empty statistics are 0, as vLLM writes them.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from odrive.core.latency_histogram import LatencyHistogram
from odrive.errors import UserError

LATENCY_METRICS = ("ttft", "tpot", "itl", "e2el")
SLO_METRICS = ("ttft", "tpot", "e2el")
DEFAULT_PERCENTILES = (99.0,)  # vLLM's default --metric-percentiles
HEADLINE_KEYS = (
    "completed", "failed", "total_input_tokens", "total_output_tokens", "duration", "request_throughput",
    "request_goodput", "output_throughput", "total_token_throughput",
)  # fmt: skip
REQUIRED_COLUMNS = ("status", "num_prompt_tokens", "num_output_tokens", "ttft", "tpot", "e2e")


def parse_percentiles(text: str) -> list[float]:
    """``"50,90,99"`` -> ``[50.0, 90.0, 99.0]``; each in (0, 100]."""
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--metric-percentiles takes comma-separated numbers, got {text!r}") from None
    if not values or any(not 0 < v <= 100 for v in values):
        raise ValueError(f"--metric-percentiles must be numbers in (0, 100], got {text!r}")
    return values


def parse_goodput(pairs: Sequence[str]) -> dict[str, float]:
    """``["ttft:500", "tpot:50"]`` -> ``{"ttft": 500.0, "tpot": 50.0}`` (milliseconds)."""
    slos: dict[str, float] = {}
    for pair in pairs:
        name, sep, value = pair.partition(":")
        try:
            ms = float(value)
        except ValueError:
            ms = math.nan
        if not sep or name not in SLO_METRICS or not ms >= 0:
            raise ValueError(f"--goodput takes KEY:MILLISECONDS with KEY in {', '.join(SLO_METRICS)} and a value >= 0, "
                             f"got {pair!r}")  # fmt: skip
        slos[name] = ms
    return slos


def add_result_arguments(p: argparse.ArgumentParser) -> None:
    """``--metric-percentiles`` and ``--goodput``, as ``vllm bench serve`` takes them."""
    p.add_argument(
        "--metric-percentiles",
        default="99",
        type=_percentiles_arg,
        help="comma-separated percentiles of TTFT, TPOT, ITL and E2EL for results.json (default: 99)",
    )
    p.add_argument("--goodput", nargs="+", default=None, type=_goodput_arg, metavar="KEY:MS",
                   help="SLOs for request_goodput in results.json: ttft:MS tpot:MS e2el:MS (any of them)")  # fmt: skip


def _percentiles_arg(text: str) -> list[float]:
    try:
        return parse_percentiles(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _goodput_arg(text: str) -> tuple[str, float]:
    try:
        return next(iter(parse_goodput([text]).items()))
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def goodput_of(args: argparse.Namespace) -> dict[str, float] | None:
    """The SLOs of ``add_result_arguments``' ``--goodput`` (None without)."""
    return dict(args.goodput) if args.goodput else None


def _stats(values: np.ndarray | LatencyHistogram, percentiles: Sequence[float]) -> dict[str, float]:
    """mean, median, std and each percentile of latencies in seconds, in milliseconds (0 when empty)."""
    if isinstance(values, LatencyHistogram):
        if not values.count:
            return {"mean": 0.0, "median": 0.0, "std": 0.0, **{f"p{_word(p)}": 0.0 for p in percentiles}}
        out = {"mean": values.mean, "median": values.percentile(50), "std": values.std}
        out.update({f"p{_word(p)}": values.percentile(p) for p in percentiles})
    else:
        v = np.asarray(values, dtype=np.float64)
        v = v if len(v) else np.zeros(1)
        out = {"mean": float(v.mean()), "median": float(np.median(v)), "std": float(v.std())}
        out.update({f"p{_word(p)}": float(np.percentile(v, p)) for p in percentiles})
    return {k: 1000.0 * x for k, x in out.items()}


def _word(p: float) -> str:
    """vLLM's spelling of a percentile in a key: 99 -> "99", 99.9 -> "99.9"."""
    return str(int(p)) if int(p) == p else str(p)


def run_duration(requests: pd.DataFrame) -> float:
    """A simulated run's span: from the first arrival to the last request's end (0 without requests)."""
    if not len(requests):
        return 0.0
    end = np.nanmax(requests["finish_time"].to_numpy(dtype=np.float64))
    return max(0.0, float(end - requests["arrival_time"].min())) if np.isfinite(end) else 0.0


def serving_results(
    requests: pd.DataFrame,
    itl: np.ndarray | LatencyHistogram,
    *,
    duration: float,
    percentiles: Sequence[float] = DEFAULT_PERCENTILES,
    goodput: dict[str, float] | None = None,
    info: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The result dict: ``info`` first (backend, model, workload, ...), then the metrics (module docstring).

    ``requests``: one row per request with ``status`` ("finished" = completed), ``num_prompt_tokens``,
    ``num_output_tokens`` and ``ttft``, ``tpot``, ``e2e`` in seconds (``odrive.core.metrics``' request columns);
    ``itl``: the completed requests' inter-token gaps in seconds (every value, or a histogram of them)."""
    missing = [c for c in REQUIRED_COLUMNS if c not in requests.columns]
    if missing:
        raise ValueError(f"request rows lack column(s) {', '.join(missing)}")
    done = requests[requests["status"] == "finished"]
    completed = len(done)
    total_in = int(done["num_prompt_tokens"].sum())
    total_out = int(done["num_output_tokens"].sum())
    rate = (lambda x: x / duration) if duration > 0 else (lambda x: 0.0)
    outputs = done["num_output_tokens"].to_numpy()
    ttft, e2el = done["ttft"].to_numpy(dtype=np.float64), done["e2e"].to_numpy(dtype=np.float64)
    tpot = done["tpot"].to_numpy(dtype=np.float64)[outputs > 1]
    result: dict[str, Any] = {"date": datetime.now().strftime("%Y%m%d-%H%M%S"), **(info or {})}
    result.update({
        "num_prompts": len(requests), "completed": completed, "failed": len(requests) - completed,
        "total_input_tokens": total_in, "total_output_tokens": total_out, "duration": float(duration),
        "request_throughput": rate(completed), "request_goodput": None, "output_throughput": rate(total_out),
        "total_token_throughput": rate(total_in + total_out),
    })  # fmt: skip
    if goodput:
        good = np.ones(completed, dtype=bool)
        limits = {"ttft": ttft, "tpot": np.where(outputs > 1, done["tpot"].to_numpy(dtype=np.float64), 0.0),
                  "e2el": e2el}  # fmt: skip
        for name, ms in goodput.items():
            good &= limits[name] <= ms / 1000.0
        result["request_goodput"] = rate(int(good.sum()))
        result["goodput_slos_ms"] = dict(goodput)
    for name, values in (("ttft", ttft), ("tpot", tpot), ("itl", itl), ("e2el", e2el)):
        for stat, value in _stats(values, percentiles).items():
            result[f"{stat}_{name}_ms"] = value
    return result


def metric_keys(result: dict[str, Any]) -> list[str]:
    """The metric keys of a result dict in display order: headline numbers, then each latency's statistics."""
    keys = [k for k in HEADLINE_KEYS if k in result]
    for name in LATENCY_METRICS:
        keys += [f"{s}_{name}_ms" for s in ("mean", "median", "std") if f"{s}_{name}_ms" in result]
        shares = [k for k in result if re.fullmatch(rf"p[0-9.]+_{name}_ms", k)]
        keys += sorted(shares, key=lambda k: float(k[1:].split("_", 1)[0]))
    return keys


def write_results(path: Path, result: dict[str, Any]) -> Path:
    """Write ``result`` as JSON (NaN and infinities become null, which strict JSON readers accept)."""
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in result.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(clean, indent=2) + "\n")
    return path


class ResultFileError(UserError, ValueError):
    """A file that is not a benchmark result."""


def read_results(path: Path) -> dict[str, Any]:
    """A results.json written by odrive or by ``vllm bench serve --save-result``."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"result file not found: {path}") from None
    except json.JSONDecodeError as err:
        raise ResultFileError(f"{path}: not a JSON file ({err.msg} at line {err.lineno})") from None
    if not isinstance(data, dict) or not any(k in data for k in HEADLINE_KEYS):
        raise ResultFileError(f"{path}: not a benchmark result (no {', '.join(HEADLINE_KEYS[:3])}, ... keys)")
    return data


def format_value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int) or float(value).is_integer() and abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:,.2f}" if abs(value) >= 1 else f"{value:.4g}"


def format_results(result: dict[str, Any]) -> str:
    """The metrics as a two-column table, headline numbers first."""
    keys = metric_keys(result)
    width = max(map(len, keys), default=0) + 2
    return "\n".join(f"{key:<{width}}{format_value(result[key]):>14}" for key in keys)
