"""What one server lets a client do: request sizes, keys and their concurrency, buffering and timeouts."""

from __future__ import annotations

from dataclasses import dataclass

from odrive.errors import ConfigError


@dataclass(frozen=True)
class ServerLimits:
    """Fair-use limits of an ``OpenAIServer`` (``odrive serve`` flags in parentheses).

    ``max_tokens``: most tokens one choice may ask for (``--max-tokens-limit``; None: the context length).
    ``max_n``: most choices per prompt (``--max-n``). ``api_keys``: with any, ``/v1/*`` needs
    ``Authorization: Bearer KEY`` (``--api-key``). ``max_concurrent_per_key``: most engine requests (prompts ×
    choices) one client — its API key, else its address — may have in flight; more is a 429
    (``--max-concurrent-per-key``). ``stream_buffer_tokens``: deltas per choice a stream may hold for a client that
    is not reading before its requests are aborted (``--stream-buffer-tokens``); ``client_stall_timeout``: seconds
    one write to a client may block before its requests are aborted and the connection closed
    (``--client-stall-timeout``). ``header_timeout``/``body_timeout``: seconds to receive a request's headers / body
    (``--header-timeout``/``--body-timeout``). ``shutdown_timeout``: on SIGTERM, seconds in-flight requests may still
    take (``--shutdown-timeout``). ``retry_after``: the Retry-After (seconds) of a 503 while draining or a 429.
    """

    max_tokens: int | None = None
    max_n: int = 8
    max_body_bytes: int = 8 * 2**20
    api_keys: tuple[str, ...] = ()
    max_concurrent_per_key: int | None = None
    stream_buffer_tokens: int = 1024
    client_stall_timeout: float = 30.0
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    shutdown_timeout: float = 30.0
    retry_after: int = 5

    def __post_init__(self) -> None:
        positive = {
            "max_n": self.max_n, "max_body_bytes": self.max_body_bytes,
            "stream_buffer_tokens": self.stream_buffer_tokens, "client_stall_timeout": self.client_stall_timeout,
            "header_timeout": self.header_timeout, "body_timeout": self.body_timeout,
            "retry_after": self.retry_after,
        }  # fmt: skip
        for name, value in [*positive.items(), ("max_tokens", self.max_tokens),
                            ("max_concurrent_per_key", self.max_concurrent_per_key)]:  # fmt: skip
            if value is not None and not value > 0:
                raise ConfigError(f"{name} must be > 0, got {value}")
        if not self.shutdown_timeout >= 0:
            raise ConfigError(f"shutdown_timeout must be >= 0, got {self.shutdown_timeout}")
        if any(not key for key in self.api_keys):
            raise ConfigError("an API key must not be empty")
