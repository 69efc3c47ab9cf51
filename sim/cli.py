"""``odrive sim`` / ``python -m sim``: simulate a workload and write tables, a figure and a summary."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

from odrive.allocators import ALLOCATORS
from odrive.bench.results import add_result_arguments, goodput_of, run_duration, serving_results, write_results
from odrive.cli_errors import CLIParser, check_served, cli_main, quiet_empty_figure, user_input
from odrive.core.latency_histogram import LatencyHistogram
from odrive.schedulers import PREEMPTION_MODES, SCHEDULERS
from sim.config import SimConfig
from sim.hardware import ACCELERATORS
from sim.latency import LATENCY_MODELS
from sim.model_spec import MODEL_SPECS, get_model_spec
from sim.report import format_summary, plot_run
from sim.simulator import simulate
from sim.workloads import parse_workload

TRACES = Path(__file__).resolve().parents[1] / "data" / "traces"  # shipped with the repository
DEFAULT_WORKLOAD = f"trace:{TRACES / 'azure_conv_2023.csv'}"


def _option(text: str) -> tuple[str, object]:
    """``NAME=VALUE`` → (name, value), the value read as an int, a float, a bool or else a string."""
    name, sep, raw = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    value: object = raw
    for parse in (int, float):
        try:
            value = parse(raw)
            break
        except ValueError:
            pass
    if raw.lower() in ("true", "false"):
        value = raw.lower() == "true"
    return name.replace("-", "_"), value


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workload", "--trace", dest="workload", default=DEFAULT_WORKLOAD,
                   help="trace:PATH[?time_scale=X&max_requests=N], poisson:rate=..,n=..,prompt=..,output=.. "
                        f"or gamma:...; a bare path means a trace (default: {DEFAULT_WORKLOAD})")
    p.add_argument("--accelerator", "--hardware", dest="accelerator", default="h100-80gb",
                   choices=sorted(ACCELERATORS))
    p.add_argument("--model", default="llama-2-7b", metavar="NAME_OR_PATH",
                   help=f"a model spec ({', '.join(MODEL_SPECS.names())}), a checkpoint folder with config.json, "
                        "a GGUF file or a packaged model name (default: llama-2-7b)")
    p.add_argument("--latency-model", default="roofline", help=f"one of {LATENCY_MODELS.names()}")
    p.add_argument("--profile", default=None,
                   help="measured profile for --latency-model calibrated (default: the shipped one of --model)")
    p.add_argument("--latency-arg", dest="latency_args", action="append", default=[], type=_option,
                   metavar="NAME=VALUE", help="a latency model option, repeatable (e.g. for calibrated: speed=0.9, "
                   "prefill_speed=0.86, the machine's speed now vs. its profile's, as the probe measures it)")
    p.add_argument("--scheduler", default="fcfs", help=f"one of {SCHEDULERS.names()}")
    p.add_argument("--scheduler-arg", dest="scheduler_kwargs", action="append", default=[], type=_option,
                   metavar="NAME=VALUE", help="a policy option, repeatable (e.g. predictor=bucket-mean, aging=50)")
    p.add_argument("--preemption-mode", default="recompute", choices=PREEMPTION_MODES)
    p.add_argument("--swap-space-gib", type=float, default=4.0, help="host swap tier for --preemption-mode swap")
    p.add_argument("--allocator", default="free-list", help=f"one of {ALLOCATORS.names()}")
    p.add_argument("--allocator-arg", dest="allocator_kwargs", action="append", default=[], type=_option,
                   metavar="NAME=VALUE", help="an allocator option, repeatable (e.g. reservation=pow2)")
    p.add_argument("--page-size", type=int, default=16)
    p.add_argument("--tensor-parallel-size", "--tp", dest="tensor_parallel_size", type=int, default=1,
                   help="accelerators one replica is sharded over (per-device pages, all-reduce cost)")
    p.add_argument("--hbm-utilization", type=float, default=0.9)
    p.add_argument("--num-pages", type=int, default=None, help="override the page count from HBM")
    p.add_argument("--max-prefill-length", type=int, default=16384)
    p.add_argument("--prefill-lengths", type=lambda s: tuple(int(x) for x in s.split(",")), default=(),
                   help="comma-separated padded prefill buckets (default: powers of two)")
    p.add_argument("--max-concurrent-prefill", type=int, default=8)
    p.add_argument("--max-concurrent-decodes", type=int, default=256)
    p.add_argument("--max-num-batched-tokens", type=int, default=None)
    p.add_argument("--chunk-size", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--check-invariants", action="store_true", help="check every plan (slower)")
    p.add_argument("--out", type=Path, default=Path("results/sim"), help="output folder")
    p.add_argument("--no-progress", action="store_true")
    add_result_arguments(p)


def config_from_args(args: argparse.Namespace, **overrides: object) -> SimConfig:
    """The SimConfig the replica flags of :func:`add_arguments` describe (``overrides`` win)."""
    fields = dict(
        accelerator=args.accelerator, model=args.model, latency_model=args.latency_model,
        scheduler=args.scheduler, allocator=args.allocator, page_size=args.page_size,
        hbm_utilization=args.hbm_utilization, num_pages=args.num_pages,
        max_prefill_length=args.max_prefill_length, prefill_lengths=args.prefill_lengths,
        max_concurrent_prefill=args.max_concurrent_prefill, max_concurrent_decodes=args.max_concurrent_decodes,
        max_num_batched_tokens=args.max_num_batched_tokens, chunk_size=args.chunk_size, seed=args.seed,
        check_invariants=args.check_invariants, scheduler_kwargs=tuple(args.scheduler_kwargs),
        allocator_kwargs=tuple(args.allocator_kwargs),
        preemption_mode=args.preemption_mode, swap_space_gib=args.swap_space_gib,
        tensor_parallel_size=args.tensor_parallel_size,
        latency_kwargs=(
            (("profile", args.profile), ("page_size", args.page_size)) if args.latency_model == "calibrated" else ()
        ) + tuple(args.latency_args),
    )  # fmt: skip
    fields.update(overrides)
    return SimConfig(**fields)  # type: ignore[arg-type]


def run(args: argparse.Namespace) -> int:
    spec = args.workload if ":" in args.workload.split("/")[0] else f"trace:{args.workload}"
    with user_input("--model"):
        get_model_spec(args.model)  # an unknown name or unreadable model fails here, before the workload is built
    with user_input("--workload"):
        workload = parse_workload(spec, seed=args.seed)
    with user_input("configuration"):
        config = config_from_args(args)
    t0 = time.perf_counter()
    result = simulate(config, workload, progress=not args.no_progress)
    wall = time.perf_counter() - t0
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    result.requests.to_csv(out / "requests.csv", index=False)
    result.steps.to_csv(out / "steps.csv", index=False)
    summary = result.summary.copy()
    summary["wall_time_s"] = wall
    summary["simulated_requests_per_wall_s"] = len(workload) / wall
    summary.to_frame("value").to_csv(out / "summary.csv")
    with quiet_empty_figure():
        figure = plot_run(result, out / "run.png")
    results = write_results(out / "results.json", sim_results(args, spec, result.requests, result.itl))
    for note in workload.notes:
        print(f"note: {note}")
    print(f"workload: {spec} ({len(workload):,} requests)")
    print(f"config:   {config.model} on {config.accelerator}, scheduler={config.scheduler}, "
          f"preemption={config.preemption_mode}, allocator={config.allocator}, page_size={config.page_size}, "
          f"pages={result.num_pages - 1:,}")
    print(format_summary(summary))
    print(f"wrote {out / 'requests.csv'}, {out / 'steps.csv'}, {out / 'summary.csv'}, {results}, {figure}")
    check_served(result.requests)  # a run that served nothing exits 1 with the reason
    return 0


def sim_results(
    args: argparse.Namespace, spec: str, requests: pd.DataFrame, itl: LatencyHistogram | None, **info: object
) -> dict:
    """The run's ``vllm bench serve``-style results (``odrive.bench.results``), labelled with what ran (and
    ``info``)."""
    info = {"backend": "odrive-sim", "model_id": args.model, "accelerator": args.accelerator,
            "latency_model": args.latency_model, "scheduler": args.scheduler, "allocator": args.allocator,
            "workload": spec, **info}  # fmt: skip
    return serving_results(requests, itl if itl is not None else LatencyHistogram(), duration=run_duration(requests),
                           percentiles=args.metric_percentiles, goodput=goodput_of(args), info=info)  # fmt: skip


@cli_main("python -m sim")
def main(argv: list[str] | None = None) -> int:
    parser = CLIParser(prog="python -m sim", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``odrive sim``."""
    parser = sub.add_parser("sim", help="simulate a trace or synthetic workload", description=__doc__)
    add_arguments(parser)
    parser.set_defaults(run=run)
