"""Replay requests against an OpenAI-compatible server and time each one as ``vllm bench serve`` does.

Every request is a streamed ``POST /v1/completions`` sent at its arrival time (open loop): the prompt as token ids
(exactly its length; the workload's own ids if it has them, mapped into ``[0, vocab_size)`` so shared prefixes stay
shared), ``max_tokens`` = its output length with ``ignore_eos`` (so it generates exactly that many tokens on servers
that honour it, as the simulator assumes), greedy, and ``stream_options`` asking for usage in every chunk. Times are
the client's, from just before the request is sent: TTFT to the first chunk carrying tokens, one inter-token gap per
later such chunk, E2E to the last chunk. Output tokens are the server's own count (its final usage).
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import pandas as pd

from odrive.core.metrics import with_latencies


@dataclass
class RequestSpec:
    """One request to send: when (seconds from the start), its prompt's token ids and how many tokens to ask for."""

    arrival_time: float
    prompt: list[int]
    max_tokens: int


@dataclass
class Timing:
    """What the client saw of one request (seconds from the run's start; None where it never happened)."""

    index: int
    scheduled: float
    num_prompt_tokens: int
    max_tokens: int
    sent: float | None = None
    first_token: float | None = None
    last_chunk: float | None = None
    num_output_tokens: int = 0
    finish_reason: str | None = None
    error: str = ""
    gaps: list[float] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.error and self.first_token is not None


@dataclass
class BenchRun:
    """Every request's timing and the run's duration (first send to the last response's end)."""

    timings: list[Timing]
    duration: float
    model: str

    def requests_frame(self) -> pd.DataFrame:
        """One row per request with ``odrive.core.metrics``' request columns (times from the run's start; a request's
        ``arrival_time`` is when it was sent) plus when it was due, and the error of a failed one."""
        t = self.timings
        frame = pd.DataFrame({
            "request_id": [f"r{x.index}" for x in t],
            "status": ["finished" if x.ok else "failed" for x in t],
            "finish_reason": [x.finish_reason for x in t],
            "scheduled_time": [x.scheduled for x in t],
            "arrival_time": [_nan(x.sent) for x in t],
            "first_token_time": [_nan(x.first_token) for x in t],
            "finish_time": [_nan(x.last_chunk) for x in t],
            "num_prompt_tokens": [x.num_prompt_tokens for x in t],
            "num_output_tokens": [x.num_output_tokens for x in t],
            "max_tokens": [x.max_tokens for x in t],
            "message": [x.error for x in t],
        })  # fmt: skip
        frame["send_lag"] = frame["arrival_time"] - frame["scheduled_time"]
        return with_latencies(frame)

    def itl(self) -> np.ndarray:
        """Every inter-token gap of the completed requests (seconds)."""
        gaps = [g for x in self.timings if x.ok for g in x.gaps]
        return np.array(gaps, dtype=np.float64)


def _nan(value: float | None) -> float:
    return math.nan if value is None else value


def _body(model: str, spec: RequestSpec) -> dict:
    return {
        "model": model, "prompt": spec.prompt, "max_tokens": spec.max_tokens, "temperature": 0.0,
        "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True, "continuous_usage_stats": True},
    }  # fmt: skip


async def _send(client: httpx.AsyncClient, model: str, spec: RequestSpec, timing: Timing, t0: float) -> None:
    """Stream one completion, filling ``timing``; never raises (a failure is ``timing.error``)."""
    counted = 0  # completion tokens the chunks so far reported (or chunks with choices, without usage)
    final: int | None = None  # the closing usage chunk's count
    last_token: float | None = None
    timing.sent = time.perf_counter() - t0
    try:
        async with client.stream("POST", "/v1/completions", json=_body(model, spec)) as response:
            if response.status_code != 200:
                text = (await response.aread()).decode(errors="replace")
                timing.error = f"HTTP {response.status_code}: {' '.join(text.split())[:300]}"
                return
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                now = time.perf_counter() - t0
                chunk = json.loads(data)
                if "error" in chunk:
                    error = chunk["error"]
                    timing.error = f"server error: {error.get('message', error) if isinstance(error, dict) else error}"
                    return
                usage = chunk.get("usage") or {}
                choices = chunk.get("choices") or []
                if choices:
                    reported = usage.get("completion_tokens")
                    new = (reported - counted) if reported is not None else 1  # no usage: one token a chunk
                    if new > 0:
                        if last_token is None:
                            timing.first_token = now
                        else:
                            timing.gaps.append(now - last_token)
                        last_token = now
                        counted += new
                    timing.last_chunk = now
                    timing.finish_reason = choices[0].get("finish_reason") or timing.finish_reason
                elif "completion_tokens" in usage:
                    final = int(usage["completion_tokens"])
    except (httpx.HTTPError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        timing.error = f"{type(exc).__name__}: {exc}"
        return
    timing.num_output_tokens = counted if final is None else final
    if timing.first_token is None:
        timing.error = "the stream ended without a token"


async def _replay(
    client: httpx.AsyncClient, model: str, specs: Sequence[RequestSpec], gate: asyncio.Semaphore | None, bar: Any
) -> BenchRun:
    """Send every request at its arrival time (relative to the first one's) and wait for all."""
    start = specs[0].arrival_time if specs else 0.0
    timings = [Timing(i, s.arrival_time - start, len(s.prompt), s.max_tokens) for i, s in enumerate(specs)]

    async def one(spec: RequestSpec, timing: Timing, t0: float) -> None:
        if gate is None:
            await _send(client, model, spec, timing, t0)
        else:
            async with gate:
                await _send(client, model, spec, timing, t0)
        if bar is not None:
            bar.update(1)

    tasks = []
    t0 = time.perf_counter()
    for spec, timing in zip(specs, timings, strict=True):
        delay = timing.scheduled - (time.perf_counter() - t0)
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(spec, timing, t0)))
    await asyncio.gather(*tasks)
    return BenchRun(timings, time.perf_counter() - t0, model)


async def replay_async(
    base_url: str,
    model: str,
    specs: Sequence[RequestSpec],
    *,
    warmup: Sequence[RequestSpec] = (),
    max_concurrency: int | None = None,
    timeout: float = 3600.0,
    progress: bool = False,
) -> tuple[BenchRun, BenchRun | None]:
    """Replay ``warmup`` (unmeasured: e.g. a JAX server compiles its shapes), then ``specs``, on one connection
    pool, at most ``max_concurrency`` requests in flight; (the measured run, the warm-up run or None)."""
    from tqdm.auto import tqdm

    limits = httpx.Limits(max_connections=max_concurrency, max_keepalive_connections=max_concurrency or 256)
    gate = asyncio.Semaphore(max_concurrency) if max_concurrency else None
    async with httpx.AsyncClient(base_url=base_url, timeout=httpx.Timeout(timeout, connect=30.0),
                                 limits=limits) as client:  # fmt: skip
        warm = await _replay(client, model, warmup, gate, None) if warmup else None
        with tqdm(total=len(specs), unit="req", desc="benchmarking", disable=not progress) as bar:
            run = await _replay(client, model, specs, gate, bar)
    return run, warm


def served_model(base_url: str, timeout: float = 30.0) -> str:
    """The first model ``GET /v1/models`` lists (what ``vllm bench serve`` uses without ``--model``)."""
    response = httpx.get(f"{base_url.rstrip('/')}/v1/models", timeout=timeout)
    response.raise_for_status()
    models = response.json().get("data") or []
    if not models:
        raise ValueError(f"{base_url}/v1/models lists no model; pass --model")
    return str(models[0]["id"])
