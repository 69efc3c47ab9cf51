"""``odrive bench --base-url URL --workload SPEC``: replay a workload against an OpenAI-compatible server (odrive
serve, vLLM, ...) at its arrival times, streamed, and write ``results.json`` (``vllm bench serve``'s keys and units,
as every ``odrive sim`` run writes) and ``requests.csv`` (one row per request). Compare the two with
``odrive compare``.

    odrive sim   --workload SPEC --latency-model calibrated ... --out results/sim
    odrive bench --workload SPEC --base-url http://127.0.0.1:8000 --out results/bench
    odrive compare results/sim/results.json results/bench/results.json
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from odrive.bench.client import BenchRun, RequestSpec, replay_async, served_model
from odrive.bench.results import add_result_arguments, format_results, goodput_of, serving_results, write_results
from odrive.cli_errors import user_input
from odrive.errors import RunError, UserError

if TYPE_CHECKING:  # the workload grammar lives with the simulator, imported when the command runs
    from sim.workloads import Workload


class ServerUnreachable(UserError):
    """The server at --base-url did not answer."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base-url", required=True, help="the server, e.g. http://127.0.0.1:8000 (it serves /v1/...)")
    p.add_argument("--workload", "--trace", dest="workload", required=True,
                   help="any odrive sim workload: trace:PATH[?...], poisson:..., shared-prefix:...; a bare path is a "
                        "trace")  # fmt: skip
    p.add_argument("--model", default=None, help="the model name to request (default: the first /v1/models lists)")
    p.add_argument("--vocab-size", type=int, default=32000,
                   help="prompt token ids are drawn from (or a workload's own ids mapped into) [0, N); use the served "
                        "model's vocabulary size (default 32000)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seeds synthetic workloads and random prompt ids")
    p.add_argument("--max-concurrency", type=int, default=None, help="at most N requests in flight (default: no cap)")
    p.add_argument(
        "--warmup",
        type=int,
        default=0,
        metavar="N",
        help="first replay the workload's first N requests, unmeasured (e.g. a JAX server compiles)",
    )
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds one request may take (default 3600)")
    p.add_argument("--out", type=Path, default=Path("results/bench"), help="output folder")
    p.add_argument("--no-progress", action="store_true")
    add_result_arguments(p)


def request_specs(workload: Workload, vocab_size: int, seed: int) -> list[RequestSpec]:
    """One request per workload request: its own prompt ids mapped into ``[0, vocab_size)`` (equal prefixes stay
    equal), else seeded random ids; exactly its prompt length."""
    if vocab_size < 1:
        raise ValueError(f"--vocab-size must be >= 1, got {vocab_size}")
    ids, rng = workload.prompt_token_ids, np.random.default_rng(seed)
    specs = []
    for i, r in enumerate(workload):
        prompt = rng.integers(0, vocab_size, r.num_prompt_tokens) if ids is None else np.asarray(ids[i]) % vocab_size
        specs.append(RequestSpec(r.arrival_time, [int(x) for x in prompt], r.num_output_tokens))
    return specs


def run(args: argparse.Namespace) -> int:
    from sim.workloads import parse_workload

    spec = args.workload if ":" in args.workload.split("/")[0] else f"trace:{args.workload}"
    with user_input("--workload"):
        workload = parse_workload(spec, seed=args.seed)
        specs = request_specs(workload, args.vocab_size, args.seed)
    base_url = args.base_url.rstrip("/")
    try:
        model = args.model or served_model(base_url)
    except Exception as exc:  # noqa: BLE001 - any failure to reach or read the server is the same user problem
        raise ServerUnreachable(f"cannot read {base_url}/v1/models: {type(exc).__name__}: {exc}") from exc
    for note in workload.notes:
        print(f"note: {note}")
    bench, warm = asyncio.run(replay_async(base_url, model, specs, warmup=specs[: max(0, args.warmup)],
                                           max_concurrency=args.max_concurrency, timeout=args.timeout,
                                           progress=not args.no_progress))  # fmt: skip
    if warm is not None:
        print(f"warm-up: {len(warm.timings)} requests in {warm.duration:.1f} s")
    out: Path = args.out
    result = bench_results(args, spec, bench)
    out.mkdir(parents=True, exist_ok=True)
    bench.requests_frame().to_csv(out / "requests.csv", index=False)
    write_results(out / "results.json", result)
    print(f"workload: {spec} ({len(workload):,} requests) against {base_url}, model {model}")
    print(format_results(result))
    print(f"wrote {out / 'requests.csv'}, {out / 'results.json'}")
    if not result["completed"]:
        first = next((t.error for t in bench.timings if t.error), "no token came back")
        raise RunError(f"all {len(bench.timings):,} requests failed; the first: {first}")
    return 0


def bench_results(args: argparse.Namespace, spec: str, bench: BenchRun) -> dict:
    info = {"backend": "odrive-bench", "base_url": args.base_url, "model_id": bench.model, "workload": spec,
            "max_concurrency": args.max_concurrency}  # fmt: skip
    return serving_results(bench.requests_frame(), bench.itl(), duration=bench.duration,
                           percentiles=args.metric_percentiles, goodput=goodput_of(args), info=info)  # fmt: skip


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``odrive bench``."""
    parser = sub.add_parser("bench", help="replay a workload against an OpenAI-compatible server; results.json",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    add_arguments(parser)
    parser.set_defaults(run=run)
