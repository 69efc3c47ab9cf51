"""The engine and background server the OpenAI-compatible server tests share.

Not a test module: ``tests/test_server_api.py`` and ``tests/test_server_load.py`` import it (after their
``pytest.importorskip`` of the server's dependencies) and bind the fixtures to module names:
``surge, server = serving_fixtures(MODEL, "api")``.
"""

from __future__ import annotations

from typing import Any

import pytest

import odrive
from odrive.server import BackgroundServer, create_app


def make_surge(checkpoint: Any, vsurge_name: str) -> odrive.vSurge:
    """The engine every server test uses (one configuration, so the jitted step shapes are compiled once)."""
    return odrive.vSurge.create_odriver(
        model=checkpoint, processor=checkpoint, max_prefill_length=64, page_size=4, hbm_utilization=0.001,
        max_concurrent_prefill=2, max_concurrent_decodes=8, seed=877, vsurge_name=vsurge_name,
    )  # fmt: skip


def serving_fixtures(model: str, vsurge_name: str) -> tuple[Any, Any]:
    """Module-scoped fixtures ``surge`` (an engine on the session's ``tiny_checkpoint``, named ``vsurge_name``)
    and ``server`` (that engine behind the app, serving it as ``model``)."""

    @pytest.fixture(scope="module")
    def surge(tiny_checkpoint):
        s = make_surge(tiny_checkpoint, vsurge_name)
        yield s
        s.stop()

    @pytest.fixture(scope="module")
    def server(surge):
        with BackgroundServer(create_app(surge, model)) as srv:
            yield srv

    return surge, server
