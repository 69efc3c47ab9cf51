"""The OpenAI-compatible HTTP API around one vSurge: ``create_app(surge, model_name=...)``.

Framework: Starlette (ASGI) served by uvicorn. Starlette is small, actively maintained, and gives exactly
what this server needs: routing, ``StreamingResponse`` for server-sent events with client-disconnect
detection, a lifespan hook to start/stop the engine thread, and pure-ASGI middleware. Request bodies are
validated with pydantic v2 models (``odrive.server.protocol``) called explicitly, so every malformed or
invalid request becomes an OpenAI-style 400 (FastAPI's automatic 422 responses would have to be
overridden anyway, and its dependency injection and auto-telemetry are not needed here).

Routes: ``POST /v1/completions``, ``POST /v1/chat/completions`` (both with ``stream: true`` SSE),
``GET /v1/models``, ``GET /health`` (liveness), ``GET /ready`` (engine thread running), ``GET /metrics``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from odrive.sampling_params import SamplingParams
from odrive.server import errors
from odrive.server.bridge import EngineClient, GenerationStream, Prompt
from odrive.server.errors import APIError, parse_body
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
from odrive.vsurge import GenerationResult, vSurge

log = logging.getLogger("odrive.server")


class SSEResponse(StreamingResponse):
    """``text/event-stream`` whose ``on_close`` runs however the response ends (finished, client gone)."""

    media_type = "text/event-stream"

    def __init__(self, content: AsyncIterator[bytes], on_close: Callable[[], None]) -> None:
        super().__init__(content, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


class OpenAIServer:
    """Route handlers bound to one engine, its Prometheus metrics, and the served model name."""

    def __init__(
        self, surge: vSurge, model_name: str, metrics: ServerMetrics | None = None, manage_engine: bool = True
    ) -> None:
        self.surge = surge
        self.model_name = model_name
        self.metrics = metrics or ServerMetrics()
        self.manage_engine = manage_engine
        self.client = EngineClient(surge)

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

    # --- plain routes --------------------------------------------------------------------------------
    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def ready(self, request: Request) -> Response:
        if not self.surge.is_running:
            return errors.engine_unavailable().response()
        return JSONResponse({"status": "ready"})

    async def models(self, request: Request) -> Response:
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
        body = await parse_body(request, CompletionRequest)
        self._check(body)
        params = self._params(body, body.max_tokens or 16)
        jobs = [(p, sp) for p in body.prompts() for sp in params]
        return await self._generate(request, body, ResponseMeta("text_completion", self.model_name), jobs, "prompt")

    async def chat_completions(self, request: Request) -> Response:
        body = await parse_body(request, ChatCompletionRequest)
        self._check(body)
        ids = await self.client.call(self._chat_prompt, body)
        max_tokens = body.requested_max_tokens or max(1, self.client.context_limit - len(ids))
        jobs = [(ids, sp) for sp in self._params(body, max_tokens)]
        return await self._generate(request, body, ResponseMeta("chat.completion", self.model_name), jobs, "messages")

    def _check(self, body: SamplingFields) -> None:
        if body.model != self.model_name:
            raise errors.model_not_found(body.model)
        problem = body.unsupported()
        if problem is not None:
            raise errors.bad_request(problem[1], param=problem[0], code="unsupported_parameter")

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
        body: SamplingFields,
        meta: ResponseMeta,
        jobs: Sequence[tuple[Prompt, SamplingParams]],
        prompt_param: str,
    ) -> Response:
        if not self.client.running:
            raise errors.engine_unavailable()
        try:
            stream = await self.client.submit(jobs)
        except ValueError as exc:
            self.metrics.on_rejected()
            raise errors.submit_error(exc, prompt_param) from None
        if body.stream:
            return SSEResponse(self._events(stream, meta, body), on_close=stream.close)
        results = await _collect(request, stream)
        if results is None:  # the client went away: nobody reads this
            return Response(status_code=499)
        if any(r is None for r in results):
            raise errors.engine_failed("a request ended without a result")
        return JSONResponse(full_response(meta, results, body.n))  # type: ignore[arg-type]

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
                if delta.result is None:
                    yield sse(errors.engine_failed(f"request {delta.request_id} failed").body())
                    continue
                results[i] = delta.result
                tail = holdback[i].finish(delta.result.text)
                if tail:
                    yield event(chunk(meta, i, tail), i)
                yield event(chunk(meta, i, None, delta.finish_reason), i)
            if body.include_usage and all(r is not None for r in results):
                yield sse(usage_chunk(meta, usage_of(results, body.n)))  # type: ignore[arg-type]
            yield DONE
        finally:
            stream.close()


async def _collect(request: Request, stream: GenerationStream) -> list[GenerationResult | None] | None:
    """Every result of ``stream``, or None (after aborting the requests) if the client disconnects first."""
    results = asyncio.ensure_future(stream.results())
    gone = asyncio.ensure_future(_disconnected(request.receive))
    try:
        await asyncio.wait({results, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not results.done():
            results.cancel()
            stream.close()
    return results.result() if results.done() and not results.cancelled() else None


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        await asyncio.sleep(0.01)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}.get(exc.status_code)
    return APIError(exc.status_code, str(exc.detail), code=code).response()


async def _server_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error", exc_info=exc)
    return APIError(500, "internal server error", type="server_error").response()


def create_app(
    surge: vSurge, model_name: str, *, metrics: ServerMetrics | None = None, manage_engine: bool = True
) -> Starlette:
    """The ASGI app. With ``manage_engine`` its lifespan starts the engine thread (and stops it on
    shutdown if it started it); ``app.state.server`` is the ``OpenAIServer``."""
    server = OpenAIServer(surge, model_name, metrics, manage_engine)
    routes = [
        Route("/health", server.health, methods=["GET"]),
        Route("/ready", server.ready, methods=["GET"]),
        Route("/metrics", server.prometheus, methods=["GET"]),
        Route("/v1/models", server.models, methods=["GET"]),
        Route("/v1/completions", server.completions, methods=["POST"]),
        Route("/v1/chat/completions", server.chat_completions, methods=["POST"]),
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
