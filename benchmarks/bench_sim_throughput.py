"""Simulated requests per wall-second on the Azure conversation trace (one modeled H100, Llama-2-7B).

Prints, side by side in one run: the full trace with decode fast-forward, and a slice with and without
fast-forward (the speed-up ratio), plus the ratio to Vidur's ~400 req/s measured on this machine class
(../shared/ANCHORS.md). Usage: python benchmarks/bench_sim_throughput.py [--requests N] [--repeat K]
"""

from __future__ import annotations

import argparse
import time

from sim.config import SimConfig
from sim.executor import SimExecutor
from sim.simulator import Simulator
from sim.workloads import load_trace

VIDUR_REQ_PER_S = 400.0  # ANCHORS.md: 2,000 requests in 5.1 s of event loop on a 2-core machine


class StepByStepExecutor(SimExecutor):
    supports_decode_runs = False


def timed_run(config: SimConfig, workload, fast_forward: bool = True) -> tuple[float, Simulator]:
    sim = Simulator(config, workload)
    if not fast_forward:
        old = sim.engine.executor
        sim.engine.executor = StepByStepExecutor(old.latency_model, old.scheduler_config)
    t0 = time.perf_counter()
    sim.run()
    return time.perf_counter() - t0, sim


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--trace", default="data/traces/azure_conv_2023.csv")
    p.add_argument("--requests", type=int, default=None, help="limit the trace (default: all 19,366)")
    p.add_argument("--slice", type=int, default=2000, help="requests for the fast-forward comparison")
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    workload = load_trace(args.trace, max_requests=args.requests)
    config = SimConfig(accelerator="h100-80gb", model="llama-2-7b", record_steps=False)
    best = min(timed_run(config, workload)[0] for _ in range(args.repeat))
    rate = len(workload) / best
    print(f"full trace: {len(workload):,} requests in {best:.2f} s wall -> {rate:,.0f} simulated req/s "
          f"({rate / VIDUR_REQ_PER_S:.1f}x Vidur's ~{VIDUR_REQ_PER_S:.0f} req/s anchor; first bar 4,000)")
    piece = workload.slice(args.slice)
    fast = min(timed_run(config, piece)[0] for _ in range(args.repeat))
    slow = min(timed_run(config, piece, fast_forward=False)[0] for _ in range(args.repeat))
    print(f"{len(piece):,}-request slice: fast-forward {len(piece) / fast:,.0f} req/s, "
          f"step-by-step {len(piece) / slow:,.0f} req/s -> fast-forward speed-up {slow / fast:.1f}x")


if __name__ == "__main__":
    main()
