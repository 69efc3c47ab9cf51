"""Simulated requests per wall-second on the Azure conversation trace (one modeled H100, Llama-2-7B).

Prints, side by side in one run: the full trace with decode fast-forward, and a slice with and without
fast-forward (the speed-up ratio), plus the ratio to Vidur's ~400 req/s measured on this machine class
(../shared/ANCHORS.md) — for the sources as they are and for the same code compiled by ``odrive.accel``
(mypyc; skipped with a note when it cannot build here), with the compiled/source ratio.
Usage: python benchmarks/bench_sim_throughput.py [--requests N] [--repeat K] [--no-compiled]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from odrive import accel
from sim.config import SimConfig
from sim.simulator import Simulator
from sim.workloads import load_trace

VIDUR_REQ_PER_S = 400.0  # ANCHORS.md: 2,000 requests in 5.1 s of event loop on a 2-core machine


def timed_run(config: SimConfig, workload, fast_forward: bool = True) -> tuple[float, Simulator]:
    sim = Simulator(config, workload, fast_forward=fast_forward)  # False: every decode step one at a time
    t0 = time.perf_counter()
    sim.run()
    return time.perf_counter() - t0, sim


def measure(args: argparse.Namespace) -> dict[str, float]:
    """Best-of-``repeat`` rates in this process (whichever build of odrive it imported)."""
    workload = load_trace(args.trace, max_requests=args.requests)
    config = SimConfig(accelerator="h100-80gb", model="llama-2-7b", record_steps=False)
    best = min(timed_run(config, workload)[0] for _ in range(args.repeat))
    piece = workload.slice(args.slice)
    fast = min(timed_run(config, piece)[0] for _ in range(args.repeat))
    slow = min(timed_run(config, piece, fast_forward=False)[0] for _ in range(args.repeat))
    from odrive.core import engine

    return {"requests": len(workload), "wall_s": best, "rate": len(workload) / best, "slice": len(piece),
            "slice_ff": len(piece) / fast, "slice_step": len(piece) / slow,
            "compiled": accel.is_compiled(engine)}  # fmt: skip


def report(name: str, r: dict[str, float]) -> None:
    print(f"{name:>8}: full trace {r['requests']:,.0f} requests in {r['wall_s']:.2f} s wall -> {r['rate']:,.0f} "
          f"simulated req/s ({r['rate'] / VIDUR_REQ_PER_S:.1f}x Vidur's ~{VIDUR_REQ_PER_S:.0f}, goal 100x)")
    print(f"{'':>8}  {r['slice']:,.0f}-request slice: fast-forward {r['slice_ff']:,.0f} req/s, step-by-step "
          f"{r['slice_step']:,.0f} req/s -> fast-forward speed-up {r['slice_ff'] / r['slice_step']:.1f}x")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--trace", default="data/traces/azure_conv_2023.csv")
    p.add_argument("--requests", type=int, default=None, help="limit the trace (default: all 19,366)")
    p.add_argument("--slice", type=int, default=2000, help="requests for the fast-forward comparison")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--no-compiled", action="store_true", help="skip the compiled build (odrive.accel)")
    p.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # the compiled child's output
    args = p.parse_args()
    if args.json:
        print(json.dumps(measure(args)))
        return
    source = measure(args)
    report("source", source)
    if args.no_compiled:
        return
    try:
        out = accel.build(log=lambda m: print(m, file=sys.stderr))
    except (RuntimeError, ValueError) as err:
        print(f"compiled: not measured ({err})".splitlines()[0])
        return
    argv = [a for a in sys.argv[1:] if a != "--no-compiled"]
    child = subprocess.run([sys.executable, sys.argv[0], *argv, "--json"], env=accel.environment(out),
                           capture_output=True, text=True, check=True)  # fmt: skip
    compiled = json.loads(child.stdout)
    if not compiled["compiled"]:
        raise SystemExit("the compiled build did not load (odrive.core.engine came from its .py)")
    report("compiled", compiled)
    print(f"compiled / source: full trace x{compiled['rate'] / source['rate']:.2f}, "
          f"slice fast-forward x{compiled['slice_ff'] / source['slice_ff']:.2f}, "
          f"step-by-step x{compiled['slice_step'] / source['slice_step']:.2f}")


if __name__ == "__main__":
    main()
