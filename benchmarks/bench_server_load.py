"""Serving load benchmark: a trace slice replayed against the HTTP server, and the same slice simulated.

The slice of an Azure trace is scaled to the tiny model: prompt lengths x ``--length-scale`` clipped to
[1, ``--max-prompt``], output lengths clipped to [1, ``--max-output``], and Poisson arrivals at ``--rate``
requests/s (``--rate 0`` keeps the trace's own timestamps x ``--time-scale``). Each request is a streamed
``/v1/completions`` call with a random token-id prompt of exactly its length and ``ignore_eos`` (so it
generates exactly its output length, as the simulator assumes), sent and timed by ``odrive bench``'s client
(``odrive.bench.client``). The simulator replays the same requests on
``SimConfig(accelerator="cpu-2core", model="tiny-bench")`` with the server's page count and limits.

Without ``--url`` the benchmark builds the tiny-bench checkpoint (random weights, 4 layers, hidden 256, 2
heads of dim 128, vocab 1024) and starts ``odrive serve`` on it in a subprocess on 127.0.0.1, warms it up
(every prefill bucket, then a burst of the slice) so compile time stays out of the measurement, and stops it
at the end. With ``--url`` it targets a running server; pass the engine flags it was started with.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from checkpoints import build_tiny_checkpoint  # noqa: E402

from odrive.bench.cli import request_specs  # noqa: E402
from odrive.bench.client import BenchRun, replay_async  # noqa: E402
from odrive.core.buckets import power_of_two_buckets  # noqa: E402
from odrive.core.metrics import summarize  # noqa: E402
from odrive.schedulers.config import default_prefill_buckets  # noqa: E402
from sim.config import SimConfig  # noqa: E402
from sim.simulator import simulate  # noqa: E402
from sim.workloads import Workload, load_trace  # noqa: E402

ROWS = [
    ("finished", "{:.0f}"), ("duration_s", "{:.2f}"), ("request_throughput", "{:.2f}"),
    ("output_token_throughput", "{:.1f}"), ("ttft_p50", "{:.4f}"), ("ttft_p90", "{:.4f}"), ("ttft_p99", "{:.4f}"),
    ("tpot_p50", "{:.4f}"), ("tpot_p90", "{:.4f}"), ("tpot_p99", "{:.4f}"), ("e2e_p50", "{:.3f}"),
    ("e2e_p90", "{:.3f}"), ("e2e_p99", "{:.3f}"),
]  # fmt: skip


def scaled_workload(args: argparse.Namespace) -> Workload:
    trace = load_trace(args.trace, max_requests=args.requests, start=args.start, time_scale=args.time_scale)
    prompts = np.clip(np.round(trace.prompt_lens * args.length_scale), 1, args.max_prompt).astype(np.int64)
    outputs = np.clip(trace.output_lens, 1, args.max_output).astype(np.int64)
    if args.rate > 0:
        gaps = np.random.default_rng(args.seed).exponential(1.0 / args.rate, size=len(trace))
        arrivals = np.cumsum(gaps) - gaps[0]
    else:
        arrivals = trace.arrival_times
    return Workload(arrivals, prompts, outputs, name=f"{Path(args.trace).name}[{args.start}:+{len(trace)}]")


# --- the real server ------------------------------------------------------------------------------------------
def start_server(args: argparse.Namespace, checkpoint: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        sys.executable, "-m", "odrive.cli", "serve", "--model", str(checkpoint), "--port", str(port),
        "--served-model-name", args.model_name, "--dtype", args.dtype, "--page-size", str(args.page_size),
        "--num-pages", str(args.num_pages), "--max-prefill-length", str(args.max_prefill_length),
        "--max-concurrent-prefill", str(args.max_concurrent_prefill),
        "--max-concurrent-decodes", str(args.max_concurrent_decodes),
        "--max-length", str(args.max_prefill_length + args.max_output), "--log-level", "warning",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, env={**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"odrive serve exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            proc.terminate()
            raise TimeoutError("odrive serve did not become ready in 180 s")
        time.sleep(0.25)


def replay(url: str, model: str, workload: Workload, vocab: int, seed: int) -> BenchRun:
    """Send every request at its arrival time (open loop) with ``odrive bench``'s client; wait for all."""
    return asyncio.run(replay_async(url, model, request_specs(workload, vocab, seed)))[0]


def warm_up(url: str, args: argparse.Namespace) -> float:
    """Compile the shapes a run can reach: every prefill bucket alone, then bursts of 1, 2, 4, ... requests
    with staggered output lengths (decode batches shrink through every size). Returns the seconds spent."""
    t = time.perf_counter()
    for bucket in (b for b in default_prefill_buckets(args.max_prefill_length) if b <= args.max_prompt):
        one = Workload(np.zeros(1), np.array([bucket]), np.array([2]))
        replay(url, args.model_name, one, args.vocab, args.seed + 1)
    for size in power_of_two_buckets(args.max_concurrent_decodes, smallest=1):
        burst = Workload(np.zeros(size), np.full(size, 8), 2 + np.arange(size))
        replay(url, args.model_name, burst, args.vocab, args.seed + 2)
    return time.perf_counter() - t


def server_frame(run: BenchRun, workload: Workload) -> pd.DataFrame:
    """The client's timings as an ``odrive.core.metrics`` requests frame (so both sides share ``summarize``)."""
    df = run.requests_frame().assign(num_preemptions=0, num_cached_tokens=0)
    mismatched = int((df["num_output_tokens"].to_numpy() != workload.output_lens).sum())
    if mismatched:
        print(f"warning: {mismatched} requests generated a different number of tokens than asked")
    return df


def engine_side(url: str) -> dict[str, float]:
    """Sums and counts of the server's own latency histograms and its preemption count, from /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    values = {s.name: s.value for f in text_string_to_metric_families(httpx.get(f"{url}/metrics").text)
              for s in f.samples if not s.labels}  # fmt: skip
    out = {"preemptions": values.get("odrive_preemptions_total", math.nan)}
    names = {"ttft": "time_to_first_token", "tpot": "time_per_output_token", "e2e": "e2e_request_latency"}
    for key, name in names.items():
        count = values.get(f"odrive_{name}_seconds_count", 0.0)
        out[f"{key}_sum"], out[f"{key}_count"] = values.get(f"odrive_{name}_seconds_sum", 0.0), count
    return out


# --- report -----------------------------------------------------------------------------------------------------
def report(workload: Workload, real: pd.Series, sim: pd.Series | None, engine: dict[str, float]) -> None:
    print(
        f"workload: {workload.name}, {len(workload)} requests, prompt mean {workload.prompt_lens.mean():.0f} "
        f"(max {workload.prompt_lens.max()}), output mean {workload.output_lens.mean():.1f} "
        f"(max {workload.output_lens.max()}), offered {len(workload) / max(workload.duration, 1e-9):.2f} req/s"
    )
    head = f"{'metric':<26}{'server (client-side)':>22}{'simulator':>14}{'sim/server':>12}"
    print(head)
    print("-" * len(head))
    for key, fmt in ROWS:
        r = real.get(key, math.nan)
        s = sim.get(key, math.nan) if sim is not None else math.nan
        ratio = s / r if r and not math.isnan(r) and not math.isnan(s) else math.nan
        print(f"{key:<26}{fmt.format(r):>22}{fmt.format(s):>14}{ratio:>12.2f}")
    if sim is not None:
        print(f"{'preemptions':<26}{engine.get('preemptions', math.nan):>22.0f}{sim['preemptions']:>14.0f}")
    for key in ("ttft", "tpot", "e2e"):
        if engine.get(f"{key}_count"):
            mean = engine[f"{key}_sum"] / engine[f"{key}_count"]
            print(f"engine-side {key} mean (from /metrics): {mean:.4f} s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default=None, help="a running odrive serve (default: start one on a tiny model)")
    p.add_argument("--model-name", default="tiny-bench")
    p.add_argument("--trace", default=str(ROOT / "data/traces/azure_conv_2023.csv"))
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--requests", type=int, default=64)
    p.add_argument("--rate", type=float, default=4.0, help="Poisson arrivals per second (0: the trace's times)")
    p.add_argument("--time-scale", type=float, default=1.0, help="with --rate 0: scale the trace's times")
    p.add_argument("--length-scale", type=float, default=0.1, help="prompt lengths are scaled by this")
    p.add_argument("--max-prompt", type=int, default=128)
    p.add_argument("--max-output", type=int, default=32)
    p.add_argument("--page-size", type=int, default=16)
    p.add_argument("--num-pages", type=int, default=128)
    p.add_argument("--max-prefill-length", type=int, default=128)
    p.add_argument("--max-concurrent-prefill", type=int, default=1)
    p.add_argument("--max-concurrent-decodes", type=int, default=8)
    p.add_argument("--dtype", default="float32", help="compute dtype of the started server")
    p.add_argument("--vocab", type=int, default=1024, help="prompt token ids are drawn from [3, vocab)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-sim", action="store_true")
    p.add_argument("--no-warmup", action="store_true")
    args = p.parse_args()
    args.max_prompt = min(args.max_prompt, args.max_prefill_length)
    workload = scaled_workload(args)

    proc = None
    with tempfile.TemporaryDirectory() as tmp:
        url = args.url
        if url is None:
            ckpt = build_tiny_checkpoint(Path(tmp) / "tiny-bench", vocab_size=1024, hidden_size=256,
                                         intermediate_size=512, layers=4, heads=2, kv_heads=2, head_dim=128,
                                         dtype="bfloat16")  # fmt: skip
            t = time.perf_counter()
            proc, url = start_server(args, ckpt)
            print(f"started odrive serve at {url} in {time.perf_counter() - t:.1f} s")
        try:
            if not args.no_warmup:
                print(f"warm-up (compiles) took {warm_up(url, args):.1f} s")
            before = engine_side(url)
            timings = replay(url, args.model_name, workload, args.vocab, args.seed)
            engine = {k: v - before.get(k, 0.0) for k, v in engine_side(url).items()}
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(30)
    real = summarize(server_frame(timings, workload))
    sim = None
    if not args.no_sim:
        config = SimConfig(
            accelerator="cpu-2core", model="tiny-bench", num_pages=args.num_pages, page_size=args.page_size,
            max_prefill_length=args.max_prefill_length, max_concurrent_prefill=args.max_concurrent_prefill,
            max_concurrent_decodes=args.max_concurrent_decodes, seed=args.seed,
        )  # fmt: skip
        sim = simulate(config, workload).summary
    report(workload, real, sim, engine)


if __name__ == "__main__":
    main()
