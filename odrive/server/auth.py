"""Who is calling: bearer API keys (OpenAI's ``Authorization: Bearer KEY``) and each client's share of the engine.

Runs on the event loop only (handlers and response callbacks), so the counts need no lock.
"""

from __future__ import annotations

import hmac
from collections import Counter

from starlette.requests import Request

from odrive.server import errors
from odrive.server.limits import ServerLimits


class Lease:
    """``size`` engine requests held by one client until ``release()`` (idempotent)."""

    def __init__(self, gate: ClientGate, client: str, size: int) -> None:
        self._gate, self.client, self.size = gate, client, size

    def release(self) -> None:
        if self.size:
            self._gate._in_flight[self.client] -= self.size
            if self._gate._in_flight[self.client] <= 0:
                del self._gate._in_flight[self.client]
            self.size = 0


class ClientGate:
    """With ``limits.api_keys``, every call must carry one of them (else a 401). With
    ``limits.max_concurrent_per_key``, a client (its key, or its address without keys) may hold at most that many
    engine requests at once: a call that would exceed it is a 429 with Retry-After, one that could never fit a 400."""

    def __init__(self, limits: ServerLimits) -> None:
        self.limits = limits
        self._keys = [k.encode() for k in limits.api_keys]
        self._in_flight: Counter[str] = Counter()

    def identify(self, request: Request) -> str:
        """The client's identity for fair use: ``key:N`` (the N-th configured key) or ``addr:HOST``."""
        if not self._keys:
            return f"addr:{request.client.host if request.client else '?'}"
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise errors.unauthorized("no API key given: send 'Authorization: Bearer YOUR_KEY'")
        given = token.strip().encode("utf-8", "replace")
        matches = [i for i, key in enumerate(self._keys) if hmac.compare_digest(given, key)]
        if not matches:
            raise errors.unauthorized("incorrect API key")
        return f"key:{matches[0]}"

    def acquire(self, client: str, size: int) -> Lease:
        limit = self.limits.max_concurrent_per_key
        if limit is not None:
            if size > limit:
                raise errors.bad_request(
                    f"this call would run {size} sequences (prompts x n); the limit per client is {limit}",
                    param="n", code="too_many_sequences",
                )  # fmt: skip
            held = self._in_flight[client]
            if held + size > limit:
                raise errors.rate_limited(
                    f"this client already has {held} sequences in flight; at most {limit} at a time",
                    self.limits.retry_after,
                )
        self._in_flight[client] += size
        return Lease(self, client, size)

    def in_flight(self, client: str) -> int:
        return self._in_flight[client]
