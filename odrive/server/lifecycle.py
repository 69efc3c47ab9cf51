"""How the HTTP server runs and ends: uvicorn, with a graceful drain on SIGTERM and an exit when the engine dies.

``GracefulServer(config, api)``: the first SIGTERM (or Ctrl-C) starts ``api.drain(shutdown_timeout)`` — new calls
get a 503 with Retry-After, in-flight ones may finish, the rest end with an error — and the process then exits 0; a
second signal stops at once. If the engine thread dies, the server exits with status 1 (``exit_code``), so a
supervisor restarts it. ``server_config`` adds the header read timeout (``odrive.server.http_timeouts``).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from types import FrameType

import uvicorn
from starlette.types import ASGIApp

from odrive.server.app import OpenAIServer
from odrive.server.http_timeouts import with_header_timeout
from odrive.server.limits import ServerLimits

log = logging.getLogger("odrive.server")
AFTER_DRAIN_S = 5.0  # uvicorn's own wait for connections once the drain is over


def server_config(app: ASGIApp, limits: ServerLimits, **kwargs: object) -> uvicorn.Config:
    """A ``uvicorn.Config`` for ``app`` with ``limits``' header timeout (``kwargs``: host, port, log_level...)."""
    kwargs.setdefault("timeout_graceful_shutdown", AFTER_DRAIN_S)
    return uvicorn.Config(app, http=with_header_timeout(limits.header_timeout), lifespan="on", **kwargs)  # type: ignore[arg-type]


class GracefulServer(uvicorn.Server):
    """A uvicorn server that drains ``api`` before it stops (see the module docstring)."""

    def __init__(self, config: uvicorn.Config, api: OpenAIServer) -> None:
        super().__init__(config)
        self.api = api
        self.exit_code = 0
        self._shutdown_requested = False
        self._drain: asyncio.Task[None] | None = None

    def request_shutdown(self) -> None:
        """Begin the graceful shutdown (what SIGTERM does); safe from any thread."""
        self._shutdown_requested = True

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._shutdown_requested:  # a second signal: stop now
            log.warning("second %s: stopping without waiting", signal.Signals(sig).name)
            super().handle_exit(sig, frame)
            self.force_exit = True
            return
        log.info("%s: draining (new calls get 503; in-flight calls have %.3g s)", signal.Signals(sig).name,
                 self.api.limits.shutdown_timeout)  # fmt: skip
        self.request_shutdown()  # on_tick starts the drain on the event loop

    async def on_tick(self, counter: int) -> bool:
        if self._shutdown_requested and self._drain is None:
            self._drain = asyncio.create_task(self._drain_then_exit())
        if self.api.engine_failed and self.exit_code == 0:
            log.error("the engine thread died (%s): exiting with status 1", self.api.surge.error)
            self.exit_code = 1
            self.should_exit = True
        return await super().on_tick(counter)

    async def _drain_then_exit(self) -> None:
        try:
            await self.api.drain(self.api.limits.shutdown_timeout)
        finally:
            self.should_exit = True
