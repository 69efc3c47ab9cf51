"""The OpenAI-compatible HTTP front end of vSurge (``odrive serve``).

``create_app(surge, model_name, limits=ServerLimits(...))`` builds the ASGI app; ``GracefulServer`` runs it with
uvicorn (draining on SIGTERM); ``BackgroundServer(app)`` runs that in a thread. Exports load lazily, so
``import odrive.server.cli`` needs no HTTP packages.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "create_app": "odrive.server.app",
    "OpenAIServer": "odrive.server.app",
    "BackgroundServer": "odrive.server.background",
    "ServerMetrics": "odrive.server.metrics",
    "ServerLimits": "odrive.server.limits",
    "GracefulServer": "odrive.server.lifecycle",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'odrive.server' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_EXPORTS[name]), name)
