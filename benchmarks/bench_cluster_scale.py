"""Cluster simulation at scale: simulated requests per wall-second vs replica count and vs trace length,
the cost of the conservative fast-forward horizon, a cProfile of the hot loop, and (``--million``) one
million requests on 64 replicas with wall time and peak memory.

Every replica sees the Azure conversation trace's own load (the replay is time-compressed by the replica
count), so the work per request stays comparable across cluster sizes. ``engine calls/req`` (Engine.step
calls per request) is the deterministic cost measure; wall times depend on the machine's load.

    python benchmarks/bench_cluster_scale.py                     # sweep + linearity + profile (minutes)
    python benchmarks/bench_cluster_scale.py --million           # + 1M-request runs (each in a subprocess)
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import resource
import subprocess
import sys
import tempfile
import time

from sim.cluster import simulate_cluster
from sim.config import SimConfig
from sim.workloads import parse_workload

TRACE = "data/traces/azure_conv_2023.csv"
VIDUR_REQ_PER_S = 400.0  # ANCHORS.md: Vidur, one replica, 2-core machine
GOAL_REQ_PER_S = 100 * VIDUR_REQ_PER_S


def replay_spec(n: int, replicas: int) -> str:
    return f"replay:{TRACE}?n={n}&time_scale={1.0 / replicas:.10g}"


def poisson_spec(n: int, replicas: int) -> str:
    # ~5.5 req/s per replica, like the conversation trace on one H100 with Llama-2-7B.
    return f"poisson:rate={5.5 * replicas:g},n={n},prompt=lognormal(1000,1,16,8000),output=uniform(16,512)"


def run_once(spec: str, replicas: int, router: str, horizon: str = "lookahead", profile: bool = False) -> dict:
    workload = parse_workload(spec, seed=0)
    with tempfile.TemporaryDirectory() as out:
        profiler = cProfile.Profile() if profile else None
        t0 = time.perf_counter()
        if profiler:
            profiler.enable()
        result = simulate_cluster(SimConfig(record_steps=False), workload, router, num_replicas=replicas,
                                  horizon=horizon, out_dir=out)  # fmt: skip
        if profiler:
            profiler.disable()
        wall = time.perf_counter() - t0
    row = {
        "spec": spec, "replicas": replicas, "router": router, "horizon": horizon, "requests": len(workload),
        "wall_s": wall, "req_per_s": len(workload) / wall, "sim_wall_s": result.wall_time_s,
        "engine_calls_per_req": result.summary["engine_step_calls"] / len(workload),
        "finished": int(result.summary["finished"]),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "sim_duration_s": result.summary["duration_s"], "ttft_p99": result.summary["ttft_p99"],
    }  # fmt: skip
    if profiler:
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(18)
        row["profile"] = text.getvalue()
    return row


def in_subprocess(spec: str, replicas: int, router: str, horizon: str = "lookahead") -> dict:
    """One run in a fresh interpreter, so its peak RSS is its own."""
    cmd = [sys.executable, __file__, "--one", spec, "--one-replicas", str(replicas), "--one-router", router,
           "--one-horizon", horizon]  # fmt: skip
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def fmt(row: dict) -> str:
    return (
        f"{row['replicas']:>4} replicas {row['router']:<18} {row['horizon']:<12} {row['requests']:>9,} req  "
        f"{row['wall_s']:8.1f} s  {row['req_per_s']:9,.0f} req/s  "
        f"{row['engine_calls_per_req']:5.2f} engine calls/req"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=40_000, help="requests per run of the replica sweep")
    p.add_argument("--replicas", default="1,4,16,64")
    p.add_argument("--routers", default="round-robin,least-outstanding,power-of-two")
    p.add_argument("--linearity", type=int, default=20_000, help="N for the N vs 10N comparison (16 replicas)")
    p.add_argument("--horizon-replicas", type=int, default=16, help="cluster size for the horizon-cost runs")
    p.add_argument("--million", action="store_true", help="also run 1,000,000 requests on 64 replicas")
    p.add_argument("--skip-sweep", action="store_true")
    p.add_argument("--one", help=argparse.SUPPRESS)
    p.add_argument("--one-replicas", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--one-router", default="round-robin", help=argparse.SUPPRESS)
    p.add_argument("--one-horizon", default="lookahead", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(run_once(args.one, args.one_replicas, args.one_router, args.one_horizon)))
        return
    replica_counts = [int(r) for r in args.replicas.split(",")]
    if not args.skip_sweep:
        print(
            f"== simulated requests per wall-second vs replica count ({args.requests:,} requests, conv trace "
            "replayed, per-replica load constant)"
        )
        for router in args.routers.split(","):
            for r in replica_counts:
                print(fmt(run_once(replay_spec(args.requests, r), r, router)), flush=True)
        r = args.horizon_replicas
        print(f"\n== cost of the conservative horizon (cluster's next arrival bounds every replica), {r} replicas")
        for router in ("round-robin", "least-outstanding", "power-of-two"):
            rows = [run_once(replay_spec(args.requests, r), r, router, h) for h in ("lookahead", "conservative")]
            for row in rows:
                print(fmt(row))
            calls = rows[1]["engine_calls_per_req"] / rows[0]["engine_calls_per_req"]
            wall = rows[1]["wall_s"] / rows[0]["wall_s"]
            print(f"     conservative / lookahead: x{calls:.2f} engine calls, x{wall:.2f} wall")
        n = args.linearity
        print(f"\n== linearity in trace length (16 replicas, round-robin): N = {n:,} vs 10N")
        small, big = (run_once(replay_spec(k, 16), 16, "round-robin") for k in (n, 10 * n))
        print(fmt(small))
        print(fmt(big))
        ratio = (big["wall_s"] / big["requests"]) / (small["wall_s"] / small["requests"])
        print(
            f"     per-request cost at 10N / at N = {ratio:.2f} (1.00 = linear); engine calls/req "
            f"{small['engine_calls_per_req']:.3f} vs {big['engine_calls_per_req']:.3f}"
        )
        print("\n== hot loop (cProfile, 16 replicas, round-robin, 20,000 requests), by own time")
        print(run_once(replay_spec(20_000, 16), 16, "round-robin", profile=True)["profile"])
    if args.million:
        print("== 1,000,000 requests on 64 replicas (each run in its own process; peak RSS of that process)")
        runs = [(replay_spec(1_000_000, 64), "round-robin"), (poisson_spec(1_000_000, 64), "round-robin"),
                (replay_spec(1_000_000, 64), "least-outstanding")]  # fmt: skip
        for spec, router in runs:
            row = in_subprocess(spec, 64, router)
            print(f"{spec}\n  {fmt(row)}  peak RSS {row['peak_rss_mib']:,.0f} MiB  "
                  f"simulated {row['sim_duration_s'] / 3600:.1f} h  ({row['req_per_s'] / VIDUR_REQ_PER_S:.1f}x Vidur, "
                  f"goal {GOAL_REQ_PER_S:,.0f} req/s)", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
