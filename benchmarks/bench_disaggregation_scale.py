"""Disaggregated vs colocated cluster simulation at scale, side by side: wall time, engine calls, peak memory.

The Azure conversation trace replayed (time-compressed by the replica count, as ``bench_cluster_scale.py``) on 64
replicas: colocated round-robin, and 16 prefill + 48 decode replicas (round-robin in both pools, the default K/V
link). Each run happens in its own process, one after the other, so the two see the same machine and their peak
RSS is their own. The goal: a disaggregated run within 2x the colocated wall time. On a shared machine the CPU
time each process spent simulating is the steadier measure; both are printed.

    python benchmarks/bench_disaggregation_scale.py                   # 200,000 requests (minutes)
    python benchmarks/bench_disaggregation_scale.py --requests 1000000
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time

from sim.cluster.spec import ClusterSpec
from sim.config import SimConfig
from sim.workloads import parse_workload

TRACE = "data/traces/azure_conv_2023.csv"


def run_once(requests: int, replicas: int, prefill: int) -> dict:
    workload = parse_workload(f"replay:{TRACE}?n={requests}&time_scale={1.0 / replicas:.10g}", seed=0)
    spec = ClusterSpec(SimConfig(record_steps=False), replicas=replicas, prefill_replicas=prefill)
    with tempfile.TemporaryDirectory() as out:
        t0, cpu0 = time.perf_counter(), time.process_time()
        result = spec.simulate(workload, out_dir=out)
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    s = result.summary
    return {
        "split": spec.split(), "requests": requests, "wall_s": wall, "cpu_s": cpu, "req_per_s": requests / wall,
        "engine_calls_per_req": s["engine_step_calls"] / requests, "finished": int(s["finished"]),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "ttft_p50": s["ttft_p50"],
        "tpot_p50": s["tpot_p50"],
    }  # fmt: skip


def in_subprocess(requests: int, replicas: int, prefill: int) -> dict:
    cmd = [sys.executable, __file__, "--one", str(requests), str(replicas), str(prefill)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=200_000)
    p.add_argument("--replicas", type=int, default=64)
    p.add_argument("--prefill-replicas", type=int, default=16)
    p.add_argument("--one", nargs=3, type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(run_once(*args.one)))
        return
    rows = [in_subprocess(args.requests, args.replicas, prefill) for prefill in (0, args.prefill_replicas)]
    for row in rows:
        print(f"{row['split']:>9}  {row['requests']:>9,} req  {row['wall_s']:8.1f} s wall  {row['cpu_s']:8.1f} s CPU  "
              f"{row['req_per_s']:9,.0f} req/s  "
              f"{row['engine_calls_per_req']:5.2f} engine calls/req  peak RSS {row['peak_rss_mib']:,.0f} MiB  "
              f"TTFT p50 {row['ttft_p50'] * 1e3:.1f} ms  TPOT p50 {row['tpot_p50'] * 1e3:.2f} ms")  # fmt: skip
    colocated, disaggregated = rows
    ratio = {k: disaggregated[k] / colocated[k] for k in ("wall_s", "cpu_s", "engine_calls_per_req")}
    print(
        f"disaggregated / colocated: wall time x{ratio['wall_s']:.2f}, CPU time x{ratio['cpu_s']:.2f}, "
        f"engine calls x{ratio['engine_calls_per_req']:.2f} (goal: <= 2)"
    )


if __name__ == "__main__":
    main()
