"""``odrive serve --model PATH``: the OpenAI-compatible HTTP server on one vSurge engine.

The HTTP stack (starlette, uvicorn, prometheus_client) is imported only when the command runs, so the
rest of the ``odrive`` CLI works without it.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from odrive.cli_errors import user_input


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, required=True, help="checkpoint directory, GGUF file or packaged model name")
    p.add_argument("--tokenizer", type=Path, default=None, help="tokenizer directory or model (default: --model)")
    p.add_argument("--served-model-name", default=None, help="the name clients use (default: the folder name)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--dtype", default=None, help="compute dtype (default: the checkpoint's torch_dtype)")
    engine = p.add_argument_group("engine (see vSurge.create_odriver)")
    engine.add_argument("--max-prefill-length", type=int, default=512)
    engine.add_argument(
        "--prefill-lengths",
        type=_int_list,
        default=None,
        help="comma-separated padded prefill buckets (default: powers of two)",
    )
    engine.add_argument("--page-size", type=int, default=16)
    engine.add_argument("--hbm-utilization", type=float, default=0.6)
    engine.add_argument("--num-pages", type=int, default=None, help="override the page count from memory")
    engine.add_argument(
        "--kv-cache-bytes",
        type=int,
        default=None,
        help="bytes for the KV pool, instead of --hbm-utilization of device memory (for devices that report none)",
    )
    engine.add_argument("--max-concurrent-prefill", type=int, default=1)
    engine.add_argument("--max-concurrent-decodes", type=int, default=None)
    engine.add_argument("--max-length", type=int, default=None, help="prompt + output cap (default 2 x prefill)")
    engine.add_argument("--seed", type=int, default=894)
    engine.add_argument("--scheduler", default="fcfs")
    engine.add_argument("--allocator", default="free-list")
    limits = p.add_argument_group("fair use and robustness")
    limits.add_argument(
        "--max-tokens-limit",
        type=int,
        default=None,
        help="most tokens one choice may ask for (default: the context length)",
    )
    limits.add_argument("--max-n", type=int, default=8, help="most choices per prompt (default 8)")
    limits.add_argument(
        "--api-key",
        action="append",
        default=None,
        metavar="KEY",
        help="require 'Authorization: Bearer KEY' on /v1/*; repeatable (default: $ODRIVE_API_KEY)",
    )
    limits.add_argument(
        "--max-concurrent-per-key",
        type=int,
        default=None,
        metavar="N",
        help="most sequences (prompts x n) one API key — or, without keys, one client address — "
        "may have in flight; more is a 429",
    )
    limits.add_argument(
        "--stream-buffer-tokens",
        type=int,
        default=1024,
        help="deltas per choice held for a client that does not read before its requests are aborted (default 1024)",
    )
    limits.add_argument(
        "--client-stall-timeout",
        type=float,
        default=30.0,
        help="seconds a write to a client may block before its requests are aborted (default 30)",
    )
    limits.add_argument(
        "--header-timeout", type=float, default=10.0, help="seconds to receive a request's headers (default 10)"
    )
    limits.add_argument(
        "--body-timeout", type=float, default=30.0, help="seconds to receive a request's body (default 30)"
    )
    limits.add_argument(
        "--max-connections",
        type=int,
        default=None,
        help="open connections beyond which new ones get a 503 (default: no limit)",
    )
    limits.add_argument("--shutdown-timeout", type=float, default=30.0,
                        help="on SIGTERM, seconds in-flight requests may still take before they are aborted "
                             "(default 30)")  # fmt: skip
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def build_surge(args: argparse.Namespace):  # noqa: ANN201 - vSurge (imported lazily)
    """The engine ``args`` describe; per-step records are off (a server runs indefinitely)."""
    import odrive

    model = odrive.load_model(args.model, dtype=args.dtype)
    processor = odrive.load_processor(args.tokenizer or args.model)
    return odrive.vSurge.create_odriver(
        model=model, processor=processor, max_prefill_length=args.max_prefill_length,
        prefill_lengths=args.prefill_lengths, page_size=args.page_size, hbm_utilization=args.hbm_utilization,
        max_concurrent_prefill=args.max_concurrent_prefill, max_concurrent_decodes=args.max_concurrent_decodes,
        seed=args.seed, vsurge_name=args.served_model_name, scheduler=args.scheduler,
        allocator=args.allocator, max_length=args.max_length, num_pages=args.num_pages,
        kv_cache_bytes=args.kv_cache_bytes, record_steps=False,
    )  # fmt: skip


def served_name(args: argparse.Namespace) -> str:
    return args.served_model_name or Path(args.model).resolve().name


def server_limits(args: argparse.Namespace):  # noqa: ANN201 - ServerLimits (imported lazily)
    """The fair-use limits the flags describe (a bad value is a ConfigError)."""
    from odrive.server.limits import ServerLimits

    env_key = os.environ.get("ODRIVE_API_KEY")
    keys = tuple(args.api_key or ([env_key] if env_key else []))
    return ServerLimits(
        max_tokens=args.max_tokens_limit, max_n=args.max_n, api_keys=keys,
        max_concurrent_per_key=args.max_concurrent_per_key, stream_buffer_tokens=args.stream_buffer_tokens,
        client_stall_timeout=args.client_stall_timeout, header_timeout=args.header_timeout,
        body_timeout=args.body_timeout, shutdown_timeout=args.shutdown_timeout,
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM (exit 0 after the drain) or until the engine thread dies (exit 1)."""
    from odrive.server.app import create_app
    from odrive.server.lifecycle import GracefulServer, server_config

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    limits = server_limits(args)
    with user_input("--model"):  # a checkpoint or engine setting the loader refuses
        surge = build_surge(args)
    plan = surge.memory_plan
    logging.getLogger("odrive.server").info(
        "%s: %d KV pages of %d tokens (%s)", served_name(args), plan.num_pages, args.page_size, plan.source
    )
    app = create_app(surge, served_name(args), limits=limits)
    config = server_config(app, limits, host=args.host, port=args.port, log_level=args.log_level,
                           limit_concurrency=args.max_connections)  # fmt: skip
    server = GracefulServer(config, app.state.server)
    server.run()
    return server.exit_code


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``odrive serve``."""
    parser = sub.add_parser("serve", help="serve a model over an OpenAI-compatible HTTP API", description=__doc__)
    add_arguments(parser)
    parser.set_defaults(run=run)
