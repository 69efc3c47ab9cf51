"""OpenAI-style errors: ``{"error": {"message", "type", "param", "code"}}`` with the right HTTP status."""

from __future__ import annotations

import asyncio
import re
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse

M = TypeVar("M", bound=BaseModel)
MAX_BODY_BYTES = 8 * 2**20


class APIError(Exception):
    """An error the API reports to the client (raised anywhere in a handler)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",  # noqa: A002
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def model_not_found(model: str) -> APIError:
    return APIError(404, f"The model '{model}' does not exist", param="model", code="model_not_found")


def engine_unavailable() -> APIError:
    return APIError(503, "the engine is not running", type="server_error", code="engine_not_running")


def engine_failed(detail: str) -> APIError:
    return APIError(500, f"the engine failed: {detail}", type="server_error", code="engine_error")


def internal_error(exc: BaseException) -> APIError:
    return APIError(500, f"internal server error ({type(exc).__name__})", type="server_error", code="internal_error")


def shutting_down(retry_after: int, detail: str = "the server is shutting down") -> APIError:
    return APIError(503, detail, type="server_error", code="server_shutting_down",
                    headers={"Retry-After": str(retry_after)})  # fmt: skip


def unauthorized(message: str) -> APIError:
    return APIError(401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


def rate_limited(message: str, retry_after: int) -> APIError:
    headers = {"Retry-After": str(retry_after)}
    return APIError(429, message, type="requests", code="rate_limit_exceeded", headers=headers)


def client_too_slow(detail: str) -> APIError:
    return APIError(408, detail, code="client_too_slow")


def submit_error(exc: ValueError, prompt_param: str) -> APIError:
    """A vSurge validation error (empty / over-long prompt, unknown token, prompt + max_tokens too long)."""
    message = str(exc)
    param = "max_tokens" if "max_tokens" in message else prompt_param
    return bad_request(message, param=param)


_TYPE_TAG = re.compile(r"^(str|int|float|bool|list|dict|none)$|[^A-Za-z0-9_]")  # a union member's tag in a loc


def _param(loc: tuple[Any, ...]) -> str | None:
    """``messages.0.role`` from pydantic's loc, without the union-member tags (``str``, ``list[int]``)."""
    parts = [str(p) for p in loc if isinstance(p, int) or not _TYPE_TAG.search(str(p))]
    return ".".join(parts) or None


def _validation_error(exc: ValidationError) -> APIError:
    first = exc.errors(include_url=False, include_input=False)[0]
    kind, loc = first.get("type"), tuple(first.get("loc", ()))
    if kind == "json_invalid":
        return bad_request(f"the request body is not valid JSON: {first.get('msg')}", code="invalid_json")
    if kind == "model_type" and not loc:
        return bad_request("the request body must be a JSON object", code="invalid_json")
    param = _param(loc)
    where = f"{param}: " if param else ""
    extra = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return bad_request(f"{where}{first.get('msg', 'invalid value')}{extra}", param=param)


async def read_body(request: Request, max_bytes: int, timeout: float) -> bytes:
    """The whole body: over ``max_bytes`` is a 413, not all there within ``timeout`` seconds a 408."""
    too_large = APIError(413, f"the request body exceeds {max_bytes} bytes", code="request_too_large")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise too_large
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout):
            async for part in request.stream():
                size += len(part)
                if size > max_bytes:
                    raise too_large
                chunks.append(part)
    except TimeoutError:
        raise APIError(408, f"the request body did not arrive within {timeout:g} s", code="request_timeout") from None
    except ClientDisconnect:
        raise APIError(400, "the client disconnected while sending the body") from None
    return b"".join(chunks)


async def parse_body(request: Request, model: type[M], max_bytes: int = MAX_BODY_BYTES, timeout: float = 30.0) -> M:
    """Read and validate a JSON body with pydantic's own parser (strict UTF-8, no lone surrogates, nesting and
    number length bounded): malformed JSON or invalid fields are a 400."""
    raw = await read_body(request, max_bytes, timeout)
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise _validation_error(exc) from None
    except (ValueError, RecursionError) as exc:  # anything the parser refuses without a ValidationError
        raise bad_request(f"the request body cannot be read: {type(exc).__name__}", code="invalid_json") from None


async def handle_api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, APIError)
    return exc.response()
