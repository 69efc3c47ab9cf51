"""odrive compare: two result files side by side (ours or vllm bench serve's), relative errors, clear errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from odrive.bench.compare import comparison, relative_error
from odrive.cli import main as odrive_main

VLLM = {  # the shape of a `vllm bench serve --save-result` file (lists and extras included)
    "date": "20250101-000000", "backend": "vllm", "model_id": "m", "tokenizer_id": "m", "num_prompts": 3,
    "request_rate": "inf", "burstiness": 1.0, "max_concurrency": None, "duration": 2.0, "completed": 3,
    "failed": 0, "total_input_tokens": 300, "total_output_tokens": 30, "request_throughput": 1.5,
    "request_goodput": None, "output_throughput": 15.0, "total_token_throughput": 165.0,
    "input_lens": [100, 100, 100], "output_lens": [10, 10, 10], "ttfts": [0.1, 0.2, 0.3], "itls": [[0.01] * 9] * 3,
    "generated_texts": ["", "", ""], "errors": ["", "", ""], "mean_ttft_ms": 200.0, "median_ttft_ms": 200.0,
    "std_ttft_ms": 81.6, "p99_ttft_ms": 298.0, "mean_tpot_ms": 10.0, "median_tpot_ms": 10.0, "std_tpot_ms": 0.0,
    "p99_tpot_ms": 10.0, "mean_itl_ms": 10.0, "median_itl_ms": 10.0, "std_itl_ms": 0.0, "p99_itl_ms": 10.0,
}  # fmt: skip


def test_relative_errors_and_shared_metrics() -> None:
    assert relative_error(100, 110) == pytest.approx(0.1) and relative_error(2.0, 1.0) == -0.5
    assert relative_error(0, 0) == 0.0 and math.isnan(relative_error(0, 1)) and math.isnan(relative_error(None, 1))
    ours = {**{k: v for k, v in VLLM.items() if not isinstance(v, list)}, "mean_ttft_ms": 220.0, "p50_itl_ms": 9.0,
            "mean_e2el_ms": 400.0}  # fmt: skip
    rows = comparison(VLLM, ours)
    keys = [k for k, *_ in rows]
    assert keys[:3] == ["completed", "failed", "total_input_tokens"]
    assert "p50_itl_ms" not in keys and "mean_e2el_ms" not in keys and "ttfts" not in keys  # only shared metrics
    assert dict((k, e) for k, _, _, e in rows)["mean_ttft_ms"] == pytest.approx(0.1)


def test_the_cli_prints_both_and_rejects_unrelated_files(tmp_path: Path, capsys) -> None:
    a, b = tmp_path / "vllm.json", tmp_path / "sim.json"
    a.write_text(json.dumps(VLLM))
    b.write_text(json.dumps({**VLLM, "backend": "odrive-sim", "mean_tpot_ms": 11.0, "itls": None}))
    assert odrive_main(["compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("mean_tpot_ms"))
    assert "10.00" in line and "11.00" in line and "+10.0%" in line
    assert "A: vllm" in out and "B: odrive-sim" in out
    (tmp_path / "x.json").write_text('{"hello": 1}')
    assert odrive_main(["compare", str(a), str(tmp_path / "x.json")]) == 2
    assert "not a benchmark result" in capsys.readouterr().err
    assert odrive_main(["compare", str(a), str(tmp_path / "missing.json")]) == 2
    assert "missing.json" in capsys.readouterr().err
