"""A bounded load test: 200 requests from 32 concurrent ``openai`` clients (completions and chat, streamed
and not) against the server; every request completes, greedy outputs equal offline ``surge.generate``,
and every KV page is free afterwards."""

from __future__ import annotations

import asyncio
import time

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")

from server_fixtures import mixed_requests, run_concurrently, serving_fixtures  # noqa: E402

from odrive.core.sampling_params import SamplingParams  # noqa: E402

MODEL = "tiny-load"
NUM_REQUESTS = 200
CONCURRENCY = 32


surge, server = serving_fixtures(MODEL, "load")


def workload(seed: int = 0) -> list[dict]:
    """Mixed requests: completion or chat, streamed or not, 2-8 word prompts, 2-10 new tokens."""
    return mixed_requests(NUM_REQUESTS, seed)


async def send(client, spec: dict) -> tuple[str, str | None, int | None]:
    """(text, finish_reason, completion tokens or None when streamed)."""
    kw = dict(model=MODEL, max_tokens=spec["max_tokens"], temperature=0)
    if spec["chat"]:
        kw["messages"] = [{"role": "user", "content": spec["text"]}]
        create, piece = client.chat.completions.create, lambda c: c.delta.content or ""
    else:
        kw["prompt"] = spec["text"]
        create, piece = client.completions.create, lambda c: c.text
    if not spec["stream"]:
        r = await create(**kw)
        choice = r.choices[0]
        return (
            (choice.message.content if spec["chat"] else choice.text),
            choice.finish_reason,
            r.usage.completion_tokens,
        )
    text, reason = [], None
    async for chunk in await create(**kw, stream=True):
        if chunk.choices:
            text.append(piece(chunk.choices[0]))
            reason = chunk.choices[0].finish_reason or reason
    return "".join(text), reason, None


async def run_load(url: str, specs: list[dict]) -> list[tuple[str, str | None, int | None]]:
    clients = [openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="sk-test", max_retries=0, timeout=120)
               for _ in range(CONCURRENCY)]  # fmt: skip
    try:
        return await run_concurrently(specs, clients, send)
    finally:
        await asyncio.gather(*(c.close() for c in clients))


def test_concurrent_clients_all_complete_match_offline_greedy_and_free_every_page(server, surge):
    specs = workload()
    finished_before = surge.engine.metrics.num_done
    t0 = time.perf_counter()
    got = asyncio.run(run_load(server.url, specs))
    wall = time.perf_counter() - t0
    assert all(g is not None for g in got)
    assert surge.engine.metrics.num_done - finished_before == NUM_REQUESTS
    # every page is back in the pool and nothing is left queued or running
    assert surge.num_free_pages == surge.num_usable_pages
    assert not surge.engine.has_unfinished and not surge.engine.scheduler.waiting

    processor = surge.processor
    prompts = [
        processor.encode(processor.apply_chat_template([{"role": "user", "content": s["text"]}]),
                         add_special_tokens=False) if s["chat"] else s["text"]
        for s in specs
    ]  # fmt: skip
    params = [SamplingParams(max_tokens=s["max_tokens"], temperature=0.0) for s in specs]
    want = surge.generate(prompts, params)
    mismatches = [(i, g, (w.text, w.finish_reason)) for i, (g, w) in enumerate(zip(got, want, strict=True))
                  if (g[0], g[1]) != (w.text, w.finish_reason) or g[2] not in (None, len(w.token_ids))]  # fmt: skip
    assert not mismatches, mismatches[:5]
    assert surge.num_free_pages == surge.num_usable_pages
    print(f"{NUM_REQUESTS} requests from {CONCURRENCY} clients in {wall:.1f} s ({NUM_REQUESTS / wall:.1f} req/s)")
