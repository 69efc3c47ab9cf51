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

from odrive.core.sampling_params import SamplingParams
from odrive.server import errors
from odrive.server.errors import APIError
from odrive.vsurge import RequestHandle, StreamDelta, vSurge

log = logging.getLogger("odrive.server")
Prompt = str | Sequence[int]
T = TypeVar("T")


class GenerationStream:
    """The deltas of one API call's requests (``n`` choices × prompts), as ``(index, delta)`` pairs.

    Iteration ends once every request has delivered its final delta. ``close()`` aborts the requests
    that have not finished (their pages go back to the pool); it is idempotent and never blocks. ``abort(error)``
    does the same and records why (``error``: the server's reason, e.g. shutdown), so the response can say so.
    With ``max_backlog``, a consumer that falls that many deltas behind (a client that does not read) is aborted:
    the engine stops generating for it instead of buffering without bound.
    """

    def __init__(
        self, client: EngineClient, loop: asyncio.AbstractEventLoop, size: int, max_backlog: int | None = None
    ) -> None:
        self._client = client
        self._loop = loop
        self._queue: asyncio.Queue[tuple[int, StreamDelta]] = asyncio.Queue()
        self._pending = size
        self.max_backlog = max_backlog
        self.handles: list[RequestHandle] = []
        self.error: APIError | None = None

    def attach(self, index: int, handle: RequestHandle) -> None:
        """Called from a pool thread right after ``submit``."""
        self.handles.append(handle)

        def deliver(delta: StreamDelta) -> None:  # runs on the engine thread: must never raise
            try:
                self._loop.call_soon_threadsafe(self._put, (index, delta))
            except RuntimeError:  # the event loop is gone (server shut down): nobody is listening
                pass

        handle.subscribe(deliver)

    def _put(self, item: tuple[int, StreamDelta]) -> None:
        self._queue.put_nowait(item)
        if self.max_backlog is not None and self._queue.qsize() > self.max_backlog and self.error is None:
            log.warning("a client fell %d deltas behind its stream: aborting its requests", self._queue.qsize())
            self.abort(errors.client_too_slow(f"the client read too slowly: more than {self.max_backlog} deltas "
                                              "were waiting to be sent"))  # fmt: skip

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

    def abort(self, error: APIError) -> None:
        """End the call early because of ``error`` (kept in ``self.error`` for the response)."""
        if self.error is None:
            self.error = error
        self.close()

    async def finals(self) -> list[StreamDelta]:
        """Wait for every request; its final delta (with the result, or the error of a failed request)."""
        out: list[StreamDelta | None] = [None] * len(self.handles)
        async for index, delta in self:
            if delta.finished:
                out[index] = delta
        return out  # type: ignore[return-value]


class EngineClient:
    """Submits and aborts on a started vSurge from asyncio code without blocking the event loop."""

    def __init__(self, surge: vSurge, max_workers: int = 4) -> None:
        self.surge = surge
        self._pool = ThreadPoolExecutor(max_workers, thread_name_prefix="odrive-api")

    @property
    def running(self) -> bool:
        return self.surge.is_running

    @property
    def vocab_size(self) -> int:
        return self.surge.model.config.vocab_size

    @property
    def max_model_len(self) -> int | None:
        return self.surge.engine.scheduler.config.max_model_len

    @property
    def context_limit(self) -> int:
        """Most prompt + output tokens one request may hold: max_model_len, capped by the KV pool."""
        alloc = self.surge.engine.allocator
        pool = alloc.num_usable_pages * alloc.page_size
        return min(self.max_model_len or pool, pool)

    async def submit(
        self, jobs: Sequence[tuple[Prompt, SamplingParams]], max_backlog: int | None = None
    ) -> GenerationStream:
        """Submit every job (all or none: on a ValueError the already-queued ones are aborted)."""
        loop = asyncio.get_running_loop()
        stream = GenerationStream(self, loop, len(jobs), max_backlog)
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
