"""From asyncio to the engine thread and back.

``vSurge.submit``/``abort`` take the engine lock, which a running step holds for the whole forward pass, so
the server calls them from a small thread pool and never blocks the event loop. Deltas come back through
``RequestHandle.subscribe`` and ``loop.call_soon_threadsafe`` into one asyncio queue per API call.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from odrive.sampling_params import SamplingParams
from odrive.vsurge import GenerationResult, RequestHandle, StreamDelta, vSurge

log = logging.getLogger("odrive.server")
Prompt = str | Sequence[int]
T = TypeVar("T")


class GenerationStream:
    """The deltas of one API call's requests (``n`` choices × prompts), as ``(index, delta)`` pairs.

    Iteration ends once every request has delivered its final delta. ``close()`` aborts the requests
    that have not finished (their pages go back to the pool); it is idempotent and never blocks.
    """

    def __init__(self, client: EngineClient, loop: asyncio.AbstractEventLoop, size: int) -> None:
        self._client = client
        self._loop = loop
        self._queue: asyncio.Queue[tuple[int, StreamDelta]] = asyncio.Queue()
        self._pending = size
        self.handles: list[RequestHandle] = []

    def attach(self, index: int, handle: RequestHandle) -> None:
        """Called from a pool thread right after ``submit``."""
        self.handles.append(handle)

        def deliver(delta: StreamDelta) -> None:  # runs on the engine thread: must never raise
            try:
                self._loop.call_soon_threadsafe(self._queue.put_nowait, (index, delta))
            except RuntimeError:  # the event loop is gone (server shut down): nobody is listening
                pass

        handle.subscribe(deliver)

    def __aiter__(self) -> GenerationStream:
        return self

    async def __anext__(self) -> tuple[int, StreamDelta]:
        if self._pending == 0:
            raise StopAsyncIteration
        index, delta = await self._queue.get()
        if delta.finished:
            self._pending -= 1
        return index, delta

    def close(self) -> None:
        live = [h.request_id for h in self.handles if not h.done]
        if live:
            self._client.abort_soon(live)

    async def results(self) -> list[GenerationResult | None]:
        """Wait for every request; None marks one the engine failed."""
        out: list[GenerationResult | None] = [None] * len(self.handles)
        async for index, delta in self:
            if delta.finished:
                out[index] = delta.result
        return out


class EngineClient:
    """Submits and aborts on a started vSurge from asyncio code without blocking the event loop."""

    def __init__(self, surge: vSurge, max_workers: int = 4) -> None:
        self.surge = surge
        self._pool = ThreadPoolExecutor(max_workers, thread_name_prefix="odrive-api")

    @property
    def running(self) -> bool:
        return self.surge.is_running

    @property
    def max_model_len(self) -> int | None:
        return self.surge.engine.scheduler.config.max_model_len

    @property
    def context_limit(self) -> int:
        """Most prompt + output tokens one request may hold: max_model_len, capped by the KV pool."""
        alloc = self.surge.engine.allocator
        pool = alloc.num_usable_pages * alloc.page_size
        return min(self.max_model_len or pool, pool)

    async def submit(self, jobs: Sequence[tuple[Prompt, SamplingParams]]) -> GenerationStream:
        """Submit every job (all or none: on a ValueError the already-queued ones are aborted)."""
        loop = asyncio.get_running_loop()
        stream = GenerationStream(self, loop, len(jobs))
        future = loop.run_in_executor(self._pool, self._submit_all, jobs, stream)
        try:
            await asyncio.shield(future)
        except asyncio.CancelledError:  # the client left while we were queueing: undo once submitted
            future.add_done_callback(lambda f: f.cancelled() or f.exception() or stream.close())
            raise
        return stream

    def _submit_all(self, jobs: Sequence[tuple[Prompt, SamplingParams]], stream: GenerationStream) -> None:
        try:
            for index, (prompt, params) in enumerate(jobs):
                stream.attach(index, self.surge.submit(prompt, params))
        except BaseException:
            self._abort([h.request_id for h in stream.handles])
            raise

    def abort_soon(self, request_ids: Sequence[str]) -> None:
        """Abort in the pool (or here, if the pool is shut down); finished ids are ignored."""
        try:
            self._pool.submit(self._abort, list(request_ids))
        except RuntimeError:
            self._abort(request_ids)

    def _abort(self, request_ids: Sequence[str]) -> None:
        for rid in request_ids:
            try:
                self.surge.abort(rid)
            except Exception:  # noqa: BLE001 - an abort must not take the server down
                log.exception("abort of %s failed", rid)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking ``fn(*args)`` (e.g. tokenization) in the pool."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
