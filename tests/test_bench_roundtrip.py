"""The loop closes: the same workload through ``odrive bench`` against ``odrive serve`` (the tiny benchmark model on
this CPU) and through ``odrive sim`` with the calibrated model of the shipped profile agree within the sim-to-real
bounds a noisy shared 2-core machine can honestly meet.

A shared machine's speed drifts with other users' load (at times 5-10x slower than when the profile was measured,
and by 20 % within a minute), so the simulator runs at the machine's speed during the benchmark: the engine's own
step periods over the model's prediction for the same batches (``odrive.profiling.probe.speed_of``: the
validation's ``run_speed``), decode-only and prefill steps apart. What is left to compare is the simulator's
structure — relative step costs, padding, batching, queueing — and what the client adds over HTTP from a second
process. The load is half the capacity a closed warm-up run measured (below saturation, where queueing does not
amplify a speed error); the warm-up run also compiles the engine's shapes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("uvicorn")

import odrive  # noqa: E402
from odrive.bench.compare import comparison, format_comparison  # noqa: E402
from odrive.calibration.features import EngineGeometry, format_lens  # noqa: E402
from odrive.calibration.profile import PROFILE_DIR, Profile  # noqa: E402
from odrive.cli import main as odrive_main  # noqa: E402
from odrive.core.engine import Engine  # noqa: E402
from odrive.profiling.probe import predict_steps, speed_of  # noqa: E402
from odrive.profiling.replay import ShapeRecorder  # noqa: E402
from odrive.server import BackgroundServer, create_app  # noqa: E402
from sim.config import SimConfig  # noqa: E402
from sim.latency.calibrated import CalibratedLatencyModel  # noqa: E402
from sim.workloads import parse_workload  # noqa: E402

PROFILE = PROFILE_DIR / "cpu-tiny-bench-f32.csv"  # unpinned: JAX already runs in this process
PAGE, PAGES, MAX_PREFILL, DECODES = 16, 32, 32, 4
N, LOAD = 24, 0.5
LENGTHS = "prompt=uniform(8,32),output=uniform(8,24)"
# Percent: (real - sim) / sim of the medians. Measured with this configuration on the shared 2-core machine while
# other users' jobs kept its load average at 6-15 (the engine ran 10-14x slower than when the profile was measured):
# E2E +14 % to +38 %, TPOT -0.5 % to +14 %, ITL -26 % to +40 %, throughput within 3.3 % (below saturation both serve
# the offered load: the bound checks that both count the same duration), the engine's own TTFT -14 % from the
# simulator's; the client's TTFT adds HTTP, SSE and a second process on the same cores: 109 ms at load 10 (at load 15
# the client's median TTFT was 4.5x the simulator's). The bounds hold at that load; a quiet machine does much better.
E2E_MEDIAN = 50.0
TPOT_MEDIAN = 50.0
TTFT_MEDIAN = 60.0  # the engine's own TTFT vs the simulator's
HTTP_OVERHEAD_MS = 1000.0  # what the client's median TTFT may add to the engine's
THROUGHPUT = 10.0


def sim_config(**kw: object) -> SimConfig:
    return SimConfig(model="tiny-bench", latency_model="calibrated", page_size=PAGE, num_pages=PAGES,
                     max_prefill_length=MAX_PREFILL, max_concurrent_prefill=1, max_concurrent_decodes=DECODES,
                     **kw)  # fmt: skip


class StepLog:
    """The real engine's executed batches and step times, as ``odrive.profiling.replay`` keeps them."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.shapes = ShapeRecorder().attach(engine)
        self.rows: list[tuple[float, bool]] = []  # (start, engine still busy after the step)
        engine.outcome_listeners.append(lambda o: self.rows.append((o.start, engine.has_unfinished)))

    def clear(self) -> None:
        self.shapes.shapes.clear()
        self.rows.clear()

    def speeds(self, model: CalibratedLatencyModel, geometry: EngineGeometry) -> tuple[float, float]:
        """(decode, prefill) speed of the recorded steps: measured back-to-back periods over predicted times."""
        starts = np.array([start for start, _ in self.rows])
        busy = np.array([b for _, b in self.rows])
        steps = pd.DataFrame({
            "q_lens": [format_lens(q) for q, _ in self.shapes.shapes],
            "kv_lens": [format_lens(kv) for _, kv in self.shapes.shapes],
            "num_prefill_seqs": [sum(n > 1 for n in q) for q, _ in self.shapes.shapes],
            "after_idle": [True, *(~busy[:-1])],
            "period_s": np.where(busy, np.append(np.diff(starts), np.nan), np.nan),
        })  # fmt: skip
        predicted = predict_steps(steps, model, geometry)
        return speed_of(predicted, "decode"), speed_of(predicted, "prefill")


def bench(url: str, spec: str, out: Path, *extra: str) -> dict:
    run = subprocess.run(
        [sys.executable, "-m", "odrive.cli", "bench", "--base-url", url, "--workload", spec, "--vocab-size", "1024",
         "--out", str(out), "--no-progress", *extra],
        capture_output=True, text=True, timeout=600, env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads((out / "results.json").read_text())


@pytest.fixture(scope="module")
def round_trip(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from checkpoints import build_tiny_checkpoint

    tmp = tmp_path_factory.mktemp("roundtrip")
    ckpt = build_tiny_checkpoint(tmp / "tiny-bench", vocab_size=1024, hidden_size=256, intermediate_size=512,
                                 layers=4, heads=2, kv_heads=2, head_dim=128, dtype="float32")  # fmt: skip
    surge = odrive.vSurge.create_odriver(
        model=odrive.load_model(ckpt, dtype="float32"), processor=odrive.load_processor(ckpt),
        max_prefill_length=MAX_PREFILL, page_size=PAGE, max_concurrent_prefill=1, max_concurrent_decodes=DECODES,
        max_length=2 * MAX_PREFILL, num_pages=PAGES, scheduler="fcfs", allocator="free-list", seed=0,
        vsurge_name="roundtrip", record_steps=False,
    )  # fmt: skip
    log = StepLog(surge.engine)
    with BackgroundServer(create_app(surge, "tiny-bench")) as server:
        # all at once, twice: the first pass compiles the shapes the workload reaches, the second measures the
        # engine's capacity now
        warm = bench(server.url, f"poisson:rate=1000,n={N},{LENGTHS}", tmp / "warm", "--warmup", str(N))
        spec = f"poisson:rate={LOAD * warm['request_throughput']:.4f},n={N},{LENGTHS}"
        log.clear()
        start = time.perf_counter()  # the engine's clock: its requests from here on are the measured run's
        real = bench(server.url, spec, tmp / "bench", "--metric-percentiles", "50,90")
    rows = surge.engine.metrics.requests_frame()
    engine_ttft = rows.loc[rows["arrival_time"] >= start, "ttft"].to_numpy()
    surge.stop()
    geometry = EngineGeometry.for_engine(sim_config().scheduler_config(), PAGE, 2 * MAX_PREFILL)
    decode, prefill = log.speeds(CalibratedLatencyModel(Profile.load(PROFILE), page_size=PAGE), geometry)
    assert odrive_main(["sim", "--latency-model", "calibrated", "--model", "tiny-bench", "--profile", str(PROFILE),
                        "--page-size", str(PAGE), "--num-pages", str(PAGES), "--max-prefill-length", str(MAX_PREFILL),
                        "--max-concurrent-prefill", "1", "--max-concurrent-decodes", str(DECODES), "--workload", spec,
                        "--latency-arg", f"speed={decode}", "--latency-arg", f"prefill_speed={prefill}",
                        "--metric-percentiles", "50,90", "--out", str(tmp / "sim"), "--no-progress"]) == 0  # fmt: skip
    sim = json.loads((tmp / "sim" / "results.json").read_text())
    return {"sim": sim, "bench": real, "dir": tmp, "speeds": (decode, prefill), "spec": spec,
            "engine_ttft": engine_ttft}  # fmt: skip


def test_both_sides_served_the_same_requests(round_trip: dict) -> None:
    sim, bench = round_trip["sim"], round_trip["bench"]
    workload = parse_workload(round_trip["spec"])
    for r in (sim, bench):
        assert (r["completed"], r["failed"]) == (N, 0)
        assert r["total_input_tokens"] == workload.prompt_lens.sum()
        assert r["total_output_tokens"] == workload.output_lens.sum()  # the server generated exactly what was asked
    for key in ("p50_itl_ms", "p90_e2el_ms", "median_tpot_ms", "std_ttft_ms"):
        assert key in sim and key in bench


def test_sim_and_real_agree_within_the_sim_to_real_bounds(round_trip: dict) -> None:
    for speed in round_trip["speeds"]:  # the engine's speed vs the profile's: this machine, under some load
        assert 0.5 < speed < 30, round_trip["speeds"]
    print(f"\nengine speed vs the profile (decode, prefill): {round_trip['speeds']}, load average {os.getloadavg()}")
    print(format_comparison(round_trip["sim"], round_trip["bench"], "A: odrive sim", "B: odrive bench"))
    errors = {k: 100 * e for k, _, _, e in comparison(round_trip["sim"], round_trip["bench"])}
    report = (round_trip["speeds"], {k: round(v, 1) for k, v in errors.items()})
    assert abs(errors["request_throughput"]) < THROUGHPUT, report
    assert abs(errors["median_e2el_ms"]) < E2E_MEDIAN, report
    assert abs(errors["median_tpot_ms"]) < TPOT_MEDIAN, report
    assert abs(errors["median_itl_ms"]) < TPOT_MEDIAN, report


def test_ttft_is_the_engines_plus_what_http_adds(round_trip: dict) -> None:
    # The engine's own TTFT (from when it got the request to the step that made the token) against the simulator's;
    # what the client sees on top of it is HTTP, SSE and a second process on the same cores.
    engine = 1000 * float(np.median(round_trip["engine_ttft"]))
    sim, client = round_trip["sim"]["median_ttft_ms"], round_trip["bench"]["median_ttft_ms"]
    print(f"median TTFT: simulated {sim:.1f} ms, engine {engine:.1f} ms, client {client:.1f} ms")
    assert len(round_trip["engine_ttft"]) == N
    assert abs(engine / sim - 1) < TTFT_MEDIAN / 100, (sim, engine, client)
    assert 0 <= client - engine < HTTP_OVERHEAD_MS, (sim, engine, client)


def test_compare_prints_the_two_runs(round_trip: dict, capsys: pytest.CaptureFixture[str]) -> None:
    d = round_trip["dir"]
    assert odrive_main(["compare", str(d / "sim" / "results.json"), str(d / "bench" / "results.json")]) == 0
    out = capsys.readouterr().out
    assert "A: odrive-sim" in out and "B: odrive-bench" in out and "median_e2el_ms" in out
