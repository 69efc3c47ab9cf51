"""The engine, background server and helpers the OpenAI-compatible server tests share.

Not a test module: the ``tests/test_server_*.py`` modules import it (after their ``pytest.importorskip`` of the
server's dependencies) and bind the fixtures to module names: ``surge, server = serving_fixtures(MODEL, "api")``.
"""

from __future__ import annotations

import asyncio
import random
import subprocess
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

import odrive
from odrive.server import BackgroundServer, create_app
from odrive.server.limits import ServerLimits


def make_surge(checkpoint: Any, vsurge_name: str) -> odrive.vSurge:
    """The engine every server test uses (one configuration, so the jitted step shapes are compiled once)."""
    return odrive.vSurge.create_odriver(
        model=checkpoint, processor=checkpoint, max_prefill_length=64, page_size=4, hbm_utilization=0.001,
        max_concurrent_prefill=2, max_concurrent_decodes=8, seed=877, vsurge_name=vsurge_name,
    )  # fmt: skip


def serving_fixtures(model: str, vsurge_name: str, limits: ServerLimits | None = None) -> tuple[Any, Any]:
    """Module-scoped fixtures ``surge`` (an engine on the session's ``tiny_checkpoint``, named ``vsurge_name``)
    and ``server`` (that engine behind the app, serving it as ``model`` with ``limits``)."""

    @pytest.fixture(scope="module")
    def surge(tiny_checkpoint):
        s = make_surge(tiny_checkpoint, vsurge_name)
        yield s
        s.stop()

    @pytest.fixture(scope="module")
    def server(surge):
        with BackgroundServer(create_app(surge, model, limits=limits)) as srv:
            yield srv

    return surge, server


WORDS = ("the engine keeps a pool of pages for attention cache when request arrives scheduler decides whether "
         "its prompt fits in free small models are useful for tests because they run quickly").split()  # fmt: skip


def mixed_requests(n: int, seed: int, max_new_tokens: int = 10) -> list[dict]:
    """Request specs for load tests: every third a chat, every other streamed, 2-8 word prompts, 2 to
    ``max_new_tokens`` new tokens."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 8)))
        out.append({"chat": i % 3 == 0, "stream": i % 2 == 0, "text": text,
                    "max_tokens": rng.randint(2, max_new_tokens)})  # fmt: skip
    return out


def all_pages_free(surge: odrive.vSurge) -> bool:
    """Every KV page is back in the pool and nothing is queued or running."""
    return surge.num_free_pages == surge.num_usable_pages and not surge.engine.has_unfinished


def wait_until(condition: Callable[[], bool], timeout: float = 60.0) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` passes (generous: a first step may compile for seconds)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def slow_steps(surge: odrive.vSurge, monkeypatch: pytest.MonkeyPatch, seconds: float) -> odrive.vSurge:
    """Make each engine step of ``surge`` take at least ``seconds`` (requests stay in flight long enough to act on)."""
    execute = surge.executor.execute

    def slow(batch):
        time.sleep(seconds)
        return execute(batch)

    monkeypatch.setattr(surge.executor, "execute", slow)
    return surge


def broken_surge(checkpoint: Any, max_failed_steps: int) -> odrive.vSurge:
    """An engine whose device is gone: every step raises ``RuntimeError("device lost")``; it gives up after
    ``max_failed_steps`` such steps in a row."""
    broken = odrive.vSurge.create_odriver(model=checkpoint, processor=checkpoint, max_prefill_length=16, page_size=4,
                                          num_pages=16, max_concurrent_decodes=2)  # fmt: skip
    broken.max_consecutive_failed_steps = max_failed_steps

    def lost(batch):
        raise RuntimeError("device lost")

    broken.executor.execute = lost
    return broken


def wait_ready(proc: subprocess.Popen, url: str, timeout: float = 120, log: Path | None = None) -> None:
    """Wait until the ``odrive serve`` process ``proc`` answers ``/ready`` with 200 (fails if it exits first)."""
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            output = log.read_text() if log is not None else (proc.communicate()[0] or "")
            raise AssertionError(f"odrive serve exited with {proc.returncode}: {output}")
        try:
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "odrive serve did not become ready"
        time.sleep(0.1)


async def run_concurrently(jobs: Sequence[Any], clients: Sequence[Any], send: Callable[[Any, Any], Awaitable[Any]]
                           ) -> list[Any]:  # fmt: skip
    """``send(client, job)`` for every job, each client taking the next job as it finishes one; results in job
    order."""
    results: list[Any] = [None] * len(jobs)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(jobs)):
        queue.put_nowait(i)

    async def worker(client: Any) -> None:
        while not queue.empty():
            i = queue.get_nowait()
            results[i] = await send(client, jobs[i])

    await asyncio.gather(*(worker(c) for c in clients))
    return results
