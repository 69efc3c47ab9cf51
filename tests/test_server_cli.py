"""``odrive serve``: every engine flag reaches the engine, and the command serves over HTTP."""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from odrive.server.cli import add_parser, build_surge, served_name


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["serve", *argv])


def test_serve_flags_reach_the_engine(tiny_checkpoint):
    args = parse(
        "--model", str(tiny_checkpoint), "--max-prefill-length", "32", "--prefill-lengths", "8,32", "--page-size", "8",
        "--num-pages", "40", "--max-concurrent-prefill", "2", "--max-concurrent-decodes", "3", "--seed", "5",
        "--served-model-name", "tiny", "--scheduler", "fcfs", "--allocator", "free-list-lifo", "--max-length", "48",
        "--port", "9", "--host", "127.0.0.2", "--hbm-utilization", "0.002",
    )  # fmt: skip
    assert (args.host, args.port, served_name(args)) == ("127.0.0.2", 9, "tiny")
    surge = build_surge(args)
    cfg = surge.engine.scheduler.config
    assert (cfg.max_prefill_length, cfg.prefill_lengths, cfg.max_model_len) == (32, (8, 32), 48)
    assert (cfg.max_concurrent_prefill, cfg.max_concurrent_decodes) == (2, 3)
    assert surge.engine.allocator.page_size == 8 and surge.engine.allocator.num_pages == 40
    assert type(surge.engine.allocator).__name__ == "LifoFreeListAllocator"
    assert surge.executor.seed == 5 and surge.memory_plan.hbm_utilization == 0.002
    assert surge.vsurge_name == "tiny" and surge.processor is not None


def test_kv_cache_bytes_sizes_the_pool(tiny_checkpoint):
    surge = build_surge(parse("--model", str(tiny_checkpoint), "--page-size", "8", "--kv-cache-bytes", "200000"))
    plan = surge.memory_plan
    assert plan.source == "kv_cache_bytes given" and plan.pages_fit == 200_000 // plan.page_bytes
    assert surge.engine.allocator.num_pages == min(plan.pages_fit, plan.pages_useful)


def test_served_name_defaults_to_the_checkpoint_folder(tiny_checkpoint):
    assert served_name(parse("--model", str(tiny_checkpoint))) == Path(tiny_checkpoint).resolve().name
    with pytest.raises(SystemExit):
        parse("--model", str(tiny_checkpoint), "--prefill-lengths", "8,x")


def test_odrive_serve_command_serves_completions(tiny_checkpoint):
    httpx = pytest.importorskip("httpx")
    for module in ("starlette", "uvicorn", "prometheus_client"):
        pytest.importorskip(module)
    from server_fixtures import wait_ready

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "odrive.cli", "serve", "--model", str(tiny_checkpoint), "--port", str(port),
           "--max-prefill-length", "16", "--page-size", "4", "--num-pages", "32", "--max-concurrent-decodes", "2",
           "--served-model-name", "cli-tiny", "--log-level", "warning"]  # fmt: skip
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(proc, url, timeout=90)
        body = {"model": "cli-tiny", "prompt": "The engine", "max_tokens": 3, "temperature": 0, "ignore_eos": True}
        r = httpx.post(f"{url}/v1/completions", json=body, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] == 3
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
