"""uvicorn's h11 protocol with a header read timeout: a connection that has not sent a whole request head within
``header_timeout`` seconds of connecting (or of starting its next request) is closed, so slowloris clients cannot
hold connections open. (Idle keep-alive connections already close after uvicorn's ``timeout_keep_alive``; bodies
have their own timeout in ``odrive.server.errors.read_body``.)"""

from __future__ import annotations

import asyncio
import logging

from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("odrive.server")


class TimedH11Protocol(H11Protocol):
    """Set ``header_timeout`` on a subclass (``with_header_timeout``); uvicorn builds one per connection."""

    header_timeout: float = 10.0
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._awaiting_head():
            if self._header_timer is None:
                self._arm()
        else:
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _awaiting_head(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _arm(self) -> None:
        self._header_timer = self.loop.call_later(self.header_timeout, self._expired)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _expired(self) -> None:
        self._header_timer = None
        if self._awaiting_head() and not self.transport.is_closing():
            peer = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
            log.info("closing the connection of %s: no request head within %.3g s", peer, self.header_timeout)
            self.transport.close()


def with_header_timeout(seconds: float) -> type[TimedH11Protocol]:
    """The protocol class to pass as ``uvicorn.Config(http=...)``."""
    return type("TimedH11Protocol", (TimedH11Protocol,), {"header_timeout": seconds})
