"""OpenAI-style errors: ``{"error": {"message", "type", "param", "code"}}`` with the right HTTP status."""

from __future__ import annotations

import json
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
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def model_not_found(model: str) -> APIError:
    return APIError(404, f"The model '{model}' does not exist", param="model", code="model_not_found")


def engine_unavailable() -> APIError:
    return APIError(503, "the engine is not running", type="server_error", code="engine_not_running")


def engine_failed(detail: str) -> APIError:
    return APIError(500, f"the engine failed: {detail}", type="server_error", code="engine_error")


def submit_error(exc: ValueError, prompt_param: str) -> APIError:
    """A vSurge validation error (empty / over-long prompt, unknown token, prompt + max_tokens too long)."""
    message = str(exc)
    param = "max_tokens" if "max_tokens" in message else prompt_param
    return bad_request(message, param=param)


def _validation_error(exc: ValidationError) -> APIError:
    first = exc.errors(include_url=False)[0]
    loc = [str(p) for p in first.get("loc", ())]
    param = ".".join(loc) or None
    where = f"{param}: " if param else ""
    extra = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return bad_request(f"{where}{first.get('msg', 'invalid value')}{extra}", param=param)


async def parse_body(request: Request, model: type[M], max_bytes: int = MAX_BODY_BYTES) -> M:
    """Read and validate a JSON body; oversized bodies are a 413, malformed JSON or invalid fields a 400."""
    too_large = APIError(413, f"the request body exceeds {max_bytes} bytes", code="request_too_large")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise too_large
    chunks, size = [], 0
    try:
        async for part in request.stream():
            size += len(part)
            if size > max_bytes:
                raise too_large
            chunks.append(part)
    except ClientDisconnect:
        raise APIError(400, "the client disconnected while sending the body") from None
    try:
        data = json.loads(b"".join(chunks))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise bad_request(f"the request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise bad_request("the request body must be a JSON object", code="invalid_json")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _validation_error(exc) from None


async def handle_api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, APIError)
    return exc.response()
