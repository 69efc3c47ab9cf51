"""The OpenAI-compatible HTTP API around one vSurge: ``create_app(surge, model_name=...)``.

Framework: Starlette (ASGI) served by uvicorn. Starlette is small, actively maintained, and gives exactly
what this server needs: routing, ``StreamingResponse`` for server-sent events with client-disconnect
detection, a lifespan hook to start/stop the engine thread, and pure-ASGI middleware. Request bodies are
validated with pydantic v2 models (``odrive.server.protocol``) called explicitly, so every malformed or
invalid request becomes an OpenAI-style 400 (FastAPI's automatic 422 responses would have to be
overridden anyway, and its dependency injection and auto-telemetry are not needed here).

Routes: ``POST /v1/completions``, ``POST /v1/chat/completions`` (both with ``stream: true`` SSE),
``GET /v1/models``, ``GET /health`` (liveness: 503 once the engine thread has died), ``GET /ready`` (engine thread
running and not draining), ``GET /metrics``.

No error escapes a handler: an unexpected one is logged once and answered with a 500 JSON body (or, mid-stream, an
error event and ``[DONE]``), so uvicorn never resets a connection. ``drain()`` is the graceful shutdown: new calls
get a 503 with Retry-After, in-flight ones may finish until a deadline, the rest end with an error.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from odrive.core.sampling_params import SamplingParams
from odrive.server import errors
from odrive.server.auth import ClientGate, Lease
from odrive.server.bridge import EngineClient, GenerationStream, Prompt
from odrive.server.errors import APIError, parse_body
from odrive.server.limits import ServerLimits
from odrive.server.metrics import HTTPMetricsMiddleware, ServerMetrics
from odrive.server.protocol import ChatCompletionRequest, CompletionRequest, SamplingFields
from odrive.server.responses import (
    DONE,
    ResponseMeta,
    StopHoldback,
    chunk,
    full_response,
    sse,
    usage,
    usage_chunk,
    usage_of,
)
from odrive.vsurge import GenerationResult, StreamDelta, vSurge

log = logging.getLogger("odrive.server")


class ClientStalled(Exception):
    """A write to the client blocked for longer than the stall timeout."""


class SSEResponse(StreamingResponse):
    """``text/event-stream`` whose ``on_close`` runs however the response ends (finished, client gone). A write that
    blocks for ``stall_timeout`` seconds (a client that stopped reading) calls ``on_stall`` and ends the response:
    uvicorn then closes the connection."""

    media_type = "text/event-stream"

    def __init__(
        self,
        content: AsyncIterator[bytes],
        on_close: Callable[[], None],
        stall_timeout: float | None = None,
        on_stall: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(content, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._on_close = on_close
        self._stall_timeout = stall_timeout
        self._on_stall = on_stall

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        timeout = self._stall_timeout

        async def send_or_stall(message: Message) -> None:
            try:
                async with asyncio.timeout(timeout):
                    await send(message)
            except TimeoutError:
                raise ClientStalled from None

        try:
            await super().__call__(scope, receive, send if timeout is None else send_or_stall)
        except ClientStalled:
            log.warning("a client stopped reading its stream for %.3g s: its requests are aborted", timeout)
            if self._on_stall is not None:
                self._on_stall()
        finally:
            self._on_close()


Handler = Callable[[Request], Awaitable[Response]]


def guarded(handler: Handler) -> Handler:
    """An API error becomes its response; anything else is logged and becomes a 500 (never escapes to uvicorn)."""

    async def endpoint(request: Request) -> Response:
        try:
            return await handler(request)
        except APIError as exc:
            return exc.response()
        except Exception as exc:  # noqa: BLE001 - a bug must cost one request, not the connection
            log.exception("unhandled error in %s %s", request.method, request.url.path)
            return errors.internal_error(exc).response()

    return endpoint


class OpenAIServer:
    """Route handlers bound to one engine, its Prometheus metrics, the served model name and its limits."""

    def __init__(
        self,
        surge: vSurge,
        model_name: str,
        metrics: ServerMetrics | None = None,
        manage_engine: bool = True,
        limits: ServerLimits | None = None,
    ) -> None:
        self.surge = surge
        self.model_name = model_name
        self.metrics = metrics or ServerMetrics()
        self.manage_engine = manage_engine
        self.limits = limits or ServerLimits()
        self.client = EngineClient(surge)
        self.gate = ClientGate(self.limits)
        self.draining = False
        self._calls: set[GenerationStream] = set()  # in flight, for drain()

    @asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        self.metrics.install(self.surge)
        started_here = self.manage_engine and not self.surge.is_running
        if started_here:
            self.surge.start()
        log.info("serving %s (engine running: %s)", self.model_name, self.surge.is_running)
        try:
            yield
        finally:
            if started_here:
                await asyncio.get_running_loop().run_in_executor(None, self.surge.stop)
            self.client.close()
            ServerMetrics.uninstall(self.surge)

    @property
    def engine_failed(self) -> bool:
        """The engine thread died: this process can serve nothing more (``/health`` is 503)."""
        return self.surge.failed

    @property
    def in_flight(self) -> int:
        return len(self._calls)

    async def drain(self, timeout: float) -> None:
        """Graceful shutdown: refuse new calls (503 + Retry-After), let in-flight ones finish for up to ``timeout``
        seconds, then end the rest with an error (an SSE error event and ``[DONE]``, or a JSON 503)."""
        self.draining = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._calls and loop.time() < deadline:
            await asyncio.sleep(0.02)
        if self._calls:
            log.warning("shutdown: aborting %d call(s) still in flight after %.3g s", len(self._calls), timeout)
            for call in list(self._calls):
                call.abort(errors.shutting_down(self.limits.retry_after,
                                                "the server shut down before this request finished"))  # fmt: skip
            grace = loop.time() + 5.0  # time for the aborted calls to send their error
            while self._calls and loop.time() < grace:
                await asyncio.sleep(0.02)

    # --- plain routes --------------------------------------------------------------------------------
    async def health(self, request: Request) -> Response:
        if self.engine_failed:
            body = {"status": "failed", "error": f"the engine thread died: {self.surge.error}"}
            return JSONResponse(body, status_code=503)
        return JSONResponse({"status": "ok"})

    async def ready(self, request: Request) -> Response:
        if self.draining:
            return errors.shutting_down(self.limits.retry_after).response()
        if not self.surge.is_running:
            return errors.engine_unavailable().response()
        return JSONResponse({"status": "ready"})

    async def models(self, request: Request) -> Response:
        self.gate.identify(request)
        card = {
            "id": self.model_name,
            "object": "model",
            "created": 0,
            "owned_by": "odrive",
            "max_model_len": self.client.max_model_len,
        }
        return JSONResponse({"object": "list", "data": [card]})

    async def prometheus(self, request: Request) -> Response:
        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # --- generation ------------------------------------------------------------------------------------
    async def completions(self, request: Request) -> Response:
        client = self._admit(request)
        body = await self._parse(request, CompletionRequest)
        self._check(body)
        params = self._params(body, body.max_tokens or 16)
        jobs = [(p, sp) for p in body.prompts() for sp in params]
        meta = ResponseMeta("text_completion", self.model_name)
        return await self._generate(request, client, body, meta, jobs, "prompt")

    async def chat_completions(self, request: Request) -> Response:
        client = self._admit(request)
        body = await self._parse(request, ChatCompletionRequest)
        self._check(body)
        ids = await self.client.call(self._chat_prompt, body)
        max_tokens = body.requested_max_tokens
        if max_tokens is None:  # fill the context, within the server's limit
            max_tokens = max(1, self.client.context_limit - len(ids))
            max_tokens = min(max_tokens, self.limits.max_tokens or max_tokens)
        jobs = [(ids, sp) for sp in self._params(body, max_tokens)]
        meta = ResponseMeta("chat.completion", self.model_name)
        return await self._generate(request, client, body, meta, jobs, "messages")

    def _admit(self, request: Request) -> str:
        """The caller's identity, before the body is read: 401 without a valid key, 503 while draining."""
        client = self.gate.identify(request)
        if self.draining:
            raise errors.shutting_down(self.limits.retry_after)
        return client

    async def _parse(self, request: Request, model: type[SamplingFields]) -> Any:
        return await parse_body(request, model, self.limits.max_body_bytes, self.limits.body_timeout)

    def _check(self, body: SamplingFields) -> None:
        if body.model != self.model_name:
            raise errors.model_not_found(body.model)
        problem = body.unsupported()
        if problem is not None:
            raise errors.bad_request(problem[1], param=problem[0], code="unsupported_parameter")
        limits = self.limits
        if body.n > limits.max_n:
            raise errors.bad_request(f"n={body.n} is more than this server allows ({limits.max_n})", param="n")
        requested = getattr(body, "requested_max_tokens", body.max_tokens)
        if limits.max_tokens is not None and requested is not None and requested > limits.max_tokens:
            raise errors.bad_request(
                f"max_tokens={requested} is more than this server allows ({limits.max_tokens})", param="max_tokens"
            )
        vocab = self.client.vocab_size
        outside = [t for t in body.stop_token_ids or () if t >= vocab]
        if outside:
            raise errors.bad_request(f"stop_token_ids {outside[:5]} are outside the vocabulary [0, {vocab})",
                                     param="stop_token_ids")  # fmt: skip

    @staticmethod
    def _params(body: SamplingFields, max_tokens: int) -> list[SamplingParams]:
        try:
            return body.sampling_params(max_tokens)
        except ValueError as exc:
            raise errors.bad_request(str(exc)) from None

    def _chat_prompt(self, body: ChatCompletionRequest) -> list[int]:
        processor = self.surge.processor
        if processor is None:
            raise errors.bad_request("this server has no tokenizer, so it cannot format chat messages")
        messages = [m.as_template_input() for m in body.messages]
        try:
            text = processor.apply_chat_template(messages, add_generation_prompt=body.add_generation_prompt)
        except Exception as exc:  # noqa: BLE001 - a template's raise_exception or a rendering error
            raise errors.bad_request(f"cannot apply the chat template: {exc}", param="messages") from None
        return processor.encode(text, add_special_tokens=False)  # the template already holds BOS

    async def _generate(
        self,
        request: Request,
        client: str,
        body: SamplingFields,
        meta: ResponseMeta,
        jobs: Sequence[tuple[Prompt, SamplingParams]],
        prompt_param: str,
    ) -> Response:
        if not self.client.running:
            raise errors.engine_unavailable()
        lease = self.gate.acquire(client, len(jobs))
        try:
            stream = await self.client.submit(jobs, self.limits.stream_buffer_tokens * len(jobs))
        except ValueError as exc:
            lease.release()
            self.metrics.on_rejected()
            raise errors.submit_error(exc, prompt_param) from None
        except BaseException:
            lease.release()
            raise
        self._calls.add(stream)
        if body.stream:
            return SSEResponse(
                self._events(stream, meta, body),
                on_close=lambda: self._end_call(stream, lease),
                stall_timeout=self.limits.client_stall_timeout,
                on_stall=lambda: stream.abort(errors.client_too_slow("the client stopped reading")),
            )
        try:
            finals = await _collect(request, stream)
        finally:
            self._end_call(stream, lease)
        if finals is None:  # the client went away: nobody reads this
            return Response(status_code=499)
        if stream.error is not None:
            raise stream.error
        failed = next((d for d in finals if d.result is None), None)
        if failed is not None:
            raise errors.engine_failed(failed.error or f"request {failed.request_id} ended without a result")
        results = [d.result for d in finals]
        return JSONResponse(full_response(meta, results, body.n))  # type: ignore[arg-type]

    def _end_call(self, stream: GenerationStream, lease: Lease) -> None:
        stream.close()
        lease.release()
        self._calls.discard(stream)

    async def _events(self, stream: GenerationStream, meta: ResponseMeta, body: SamplingFields) -> AsyncIterator[bytes]:
        size = len(stream.handles)
        holdback = [StopHoldback(body.stop or ()) for _ in range(size)]
        results: list[GenerationResult | None] = [None] * size
        generated = [0] * size
        continuous = body.continuous_usage

        def event(payload: dict[str, Any], i: int) -> bytes:
            if continuous:
                payload["usage"] = usage(stream.handles[i].request.num_prompt_tokens, generated[i])
            return sse(payload)

        try:
            if meta.is_chat:
                for i in range(size):
                    yield event(chunk(meta, i, "", role=True), i)
            async for i, delta in stream:
                generated[i] += len(delta.token_ids)
                if not delta.finished:
                    text = holdback[i].push(delta.text)
                    if text or continuous:
                        yield event(chunk(meta, i, text), i)
                    continue
                if stream.error is not None and delta.finish_reason == "aborted":
                    continue  # one error event for the call, below
                if delta.result is None:
                    yield sse(errors.engine_failed(delta.error or f"request {delta.request_id} failed").body())
                    continue
                results[i] = delta.result
                tail = holdback[i].finish(delta.result.text)
                if tail:
                    yield event(chunk(meta, i, tail), i)
                yield event(chunk(meta, i, None, delta.finish_reason), i)
            if stream.error is not None:
                yield sse(stream.error.body())
            elif body.include_usage and all(r is not None for r in results):
                yield sse(usage_chunk(meta, usage_of(results, body.n)))  # type: ignore[arg-type]
            yield DONE
        except Exception as exc:  # noqa: BLE001 - the response has started: end it with an error event
            log.exception("stream failed")
            yield sse(errors.internal_error(exc).body())
            yield DONE
        finally:
            stream.close()


async def _collect(request: Request, stream: GenerationStream) -> list[StreamDelta] | None:
    """Every request's final delta, or None (after aborting the requests) if the client disconnects first."""
    finals = asyncio.ensure_future(stream.finals())
    gone = asyncio.ensure_future(_disconnected(request.receive))
    try:
        await asyncio.wait({finals, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not finals.done():
            finals.cancel()
            stream.close()
    return finals.result() if finals.done() and not finals.cancelled() else None


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        await asyncio.sleep(0.01)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}.get(exc.status_code)
    return APIError(exc.status_code, str(exc.detail), code=code).response()


async def _server_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error", exc_info=exc)
    return errors.internal_error(exc).response()


def create_app(
    surge: vSurge,
    model_name: str,
    *,
    metrics: ServerMetrics | None = None,
    manage_engine: bool = True,
    limits: ServerLimits | None = None,
) -> Starlette:
    """The ASGI app. With ``manage_engine`` its lifespan starts the engine thread (and stops it on
    shutdown if it started it); ``app.state.server`` is the ``OpenAIServer``; ``limits`` its fair-use limits."""
    server = OpenAIServer(surge, model_name, metrics, manage_engine, limits)
    routes = [
        Route("/health", guarded(server.health), methods=["GET"]),
        Route("/ready", guarded(server.ready), methods=["GET"]),
        Route("/metrics", guarded(server.prometheus), methods=["GET"]),
        Route("/v1/models", guarded(server.models), methods=["GET"]),
        Route("/v1/completions", guarded(server.completions), methods=["POST"]),
        Route("/v1/chat/completions", guarded(server.chat_completions), methods=["POST"]),
    ]
    paths = frozenset(r.path for r in routes)
    handlers: dict[Any, Any] = {APIError: errors.handle_api_error, HTTPException: _http_error, Exception: _server_error}
    app = Starlette(
        routes=routes,
        middleware=[Middleware(HTTPMetricsMiddleware, counter=server.metrics.http, paths=paths)],
        exception_handlers=handlers,
        lifespan=server.lifespan,
    )
    app.state.server = server
    return app
