"""Run the ASGI app with uvicorn in a daemon thread on a loopback port (tests and benchmarks)."""

from __future__ import annotations

import socket
import threading
import time

from starlette.types import ASGIApp

from odrive.server.lifecycle import GracefulServer, server_config


class BackgroundServer:
    """``with BackgroundServer(app) as server: ... server.url``; port 0 picks a free port (bound before
    uvicorn starts, so there is no race for it). ``app`` is one ``create_app`` built: the server applies its
    limits, and ``shutdown()`` drains it as SIGTERM would."""

    def __init__(self, app: ASGIApp, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning") -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self.host, self.port = self._sock.getsockname()[:2]
        self.api = app.state.server  # type: ignore[attr-defined]
        self._server = GracefulServer(server_config(app, self.api.limits, log_level=log_level), self.api)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, name="odrive-http", daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def exit_code(self) -> int:
        """1 once the server stopped because the engine thread died, else 0."""
        return self._server.exit_code

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def start(self, timeout: float = 60.0) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the HTTP server failed to start (see the log)")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"the HTTP server did not start within {timeout} s")
            time.sleep(0.01)
        return self

    def shutdown(self, timeout: float = 120.0) -> None:
        """Stop as on SIGTERM: drain (new calls 503, in-flight ones finish or are aborted), then exit."""
        self._server.request_shutdown()
        self._thread.join(timeout)
        self._sock.close()

    def stop(self, timeout: float = 30.0) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._sock.close()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
