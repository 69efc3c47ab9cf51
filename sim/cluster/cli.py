"""``python -m sim.cluster``: simulate a workload on many replicas behind a router; write tables and a figure."""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from odrive.bench.results import write_results
from odrive.cli_errors import CLIParser, check_served, cli_main, quiet_empty_figure, user_input
from odrive.errors import ConfigError
from sim.cli import TRACES, config_from_args, sim_results
from sim.cli import add_arguments as add_replica_arguments
from sim.cluster import disaggregated_cli
from sim.cluster.disaggregated import simulate_disaggregated
from sim.cluster.report import format_cluster, plot_cluster
from sim.cluster.routers import ROUTERS
from sim.cluster.simulator import HORIZONS, simulate_cluster
from sim.cluster.table_sink import FORMATS, default_format, read_table
from sim.cluster.workloads import zipf_groups
from sim.config import SimConfig
from sim.workloads import parse_workload

DEFAULT_WORKLOAD = f"replay:{TRACES / 'azure_conv_2023.csv'}?n=100000&time_scale=0.0625"


RESULT_COLUMNS = ["status", "arrival_time", "finish_time", "num_prompt_tokens", "num_output_tokens", "ttft", "tpot",
                  "e2e"]  # what results.json needs of the requests table  # fmt: skip


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_replica_arguments(p)  # every single-replica flag is the default config of each replica
    p.set_defaults(workload=DEFAULT_WORKLOAD, out=Path("results/cluster"))
    p.add_argument("--replicas", type=int, default=16, help="number of replicas (default 16)")
    p.add_argument("--router", default="round-robin", choices=ROUTERS.names())
    p.add_argument("--replica-configs", type=Path, default=None,
                   help="JSON list of SimConfig overrides, each optionally with 'count' (heterogeneous cluster); "
                        "counts must add up to --replicas")  # fmt: skip
    p.add_argument(
        "--horizon",
        default="lookahead",
        choices=HORIZONS,
        help="fast-forward bound: lookahead (exact, faster) or conservative (cluster's next arrival)",
    )
    p.add_argument(
        "--prefix-groups",
        type=int,
        default=0,
        help="give requests Zipf-distributed prefix group ids (for prefix-affinity); 0: none",
    )
    p.add_argument("--affinity-tokens", type=int, default=64,
                   help="prefix-affinity keys on each prompt's first N token ids, for workloads that carry them "
                        "(default 64; Mooncake traces share their first 512-token block: use more)")  # fmt: skip
    p.add_argument("--format", dest="table_format", default=default_format(), choices=FORMATS)
    p.add_argument("--record-steps", action="store_true", help="also stream per-step rows (large)")
    p.add_argument("--chunk-rows", type=int, default=1 << 16, help="rows per write to the tables")
    disaggregated_cli.add_arguments(p)


def replica_configs(args: argparse.Namespace) -> list[SimConfig]:
    if args.replicas < 1:
        raise ConfigError(f"--replicas must be >= 1, got {args.replicas}")
    base = config_from_args(args, record_steps=args.record_steps)
    if args.replica_configs is None:
        return [base] * args.replicas
    configs: list[SimConfig] = []
    path = args.replica_configs
    try:
        entries = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: not valid JSON: {err}") from None
    for entry in entries if isinstance(entries, list) else [entries]:
        if not isinstance(entry, dict):
            raise ConfigError(f"{path}: each entry must be an object of SimConfig fields, got {entry!r}")
        entry = dict(entry)
        count = int(entry.pop("count", 1))
        for key in ("prefill_lengths", "latency_kwargs"):
            if key in entry:
                entry[key] = tuple(tuple(x) if isinstance(x, list) else x for x in entry[key])
        try:
            configs += [dataclasses.replace(base, **entry)] * count
        except TypeError as err:  # a field SimConfig does not have
            raise ConfigError(f"{path}: {err}") from None
    if len(configs) != args.replicas:
        raise ConfigError(f"{args.replica_configs} describes {len(configs)} replicas, --replicas is {args.replicas}")
    return configs


def run(args: argparse.Namespace) -> int:
    spec = args.workload if ":" in args.workload.split("/")[0] else f"trace:{args.workload}"
    t0 = time.perf_counter()
    with user_input("--workload"):
        workload = parse_workload(spec, seed=args.seed)
    groups = zipf_groups(len(workload), args.prefix_groups, seed=args.seed) if args.prefix_groups else None
    build_s = time.perf_counter() - t0
    with user_input("configuration"):
        configs = replica_configs(args)
        pools = disaggregated_cli.pools(args, configs[0])
    common = dict(
        prefix_keys=groups, affinity_tokens=args.affinity_tokens, seed=args.seed, horizon=args.horizon,
        out_dir=args.out, table_format=args.table_format, record_steps=args.record_steps,
        chunk_rows=args.chunk_rows, progress=not args.no_progress,
    )  # fmt: skip
    if pools is None:
        result = simulate_cluster(configs, workload, args.router, **common)
    else:
        result = simulate_disaggregated(pools.prefill, pools.decode, workload, **pools.kwargs(), **common)
    out: Path = args.out
    result.summary.to_frame("value").to_csv(out / "summary.csv")
    result.replicas.to_csv(out / "replicas.csv", index=False)
    rows = result.requests(columns=RESULT_COLUMNS)
    results = write_results(out / "results.json", sim_results(args, spec, rows, result.itl, replicas=len(configs),
                                                              router=result.router))  # fmt: skip
    for note in workload.notes:
        print(f"note: {note}")
    with quiet_empty_figure():
        figure = plot_cluster(result, out / "cluster.png")
    print(f"workload: {spec} ({len(workload):,} requests, built in {build_s:.1f} s)")
    print(format_cluster(result))
    wrote = [result.requests_path, result.steps_path, out / "summary.csv", out / "replicas.csv", results, figure]
    print("wrote " + ", ".join(str(p) for p in wrote if p is not None))
    if result.summary.get("finished", 1) == 0:  # a run that served nothing exits 1 with the reason
        check_served(read_table(result.requests_path))
    return 0


@cli_main("python -m sim.cluster")
def main(argv: list[str] | None = None) -> int:
    parser = CLIParser(prog="python -m sim.cluster", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))
