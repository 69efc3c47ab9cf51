"""Fair use: per-request limits, bearer API keys with per-key concurrency, clients that do not read their stream,
and header/body read timeouts (slowloris)."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")

from server_fixtures import all_pages_free, serving_fixtures, slow_steps, wait_until  # noqa: E402

from odrive.server import create_app  # noqa: E402
from odrive.server.limits import ServerLimits  # noqa: E402

MODEL = "tiny-fair"
KEYS = ("sk-alpha", "sk-beta")
LIMITS = ServerLimits(max_tokens=8, max_n=2, api_keys=KEYS, max_concurrent_per_key=3, header_timeout=0.5,
                      body_timeout=0.5)  # fmt: skip
PROMPT = "The engine keeps a pool"


surge, server = serving_fixtures(MODEL, "fair", LIMITS)


def client(server, key: str | None = KEYS[0], timeout: float = 60) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=server.url, headers=headers, timeout=timeout)


@pytest.fixture
def slow_engine(surge, monkeypatch):
    """Each step takes >= 0.15 s: 8 tokens keep a request in flight for over a second."""
    return slow_steps(surge, monkeypatch, 0.15)


# --- API keys ---------------------------------------------------------------------------------------------
def test_api_keys_are_required_on_the_api_but_not_on_health(server):
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 2}
    for key in (None, "sk-wrong", ""):
        with client(server, key) as c:
            r = c.post("/v1/completions", json=body)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
            assert r.json()["error"]["code"] == "invalid_api_key"
            assert c.get("/v1/models").status_code == 401
            assert c.get("/health").status_code == 200 and c.get("/metrics").status_code == 200
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEYS[1], max_retries=0) as oa:
        assert oa.completions.create(model=MODEL, prompt=PROMPT, max_tokens=2).usage.completion_tokens >= 1
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="sk-nope", max_retries=0) as oa:
        with pytest.raises(openai.AuthenticationError):
            oa.models.list()


# --- per-request limits -----------------------------------------------------------------------------------
def test_max_tokens_and_n_limits(server):
    with client(server) as c:
        r = c.post("/v1/completions", json={"model": MODEL, "prompt": PROMPT, "max_tokens": 9})
        assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"
        assert "more than this server allows (8)" in r.json()["error"]["message"]
        r = c.post("/v1/completions", json={"model": MODEL, "prompt": PROMPT, "max_tokens": 2, "n": 3})
        assert r.status_code == 400 and r.json()["error"]["param"] == "n"
        chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "ignore_eos": True}
        r = c.post("/v1/chat/completions", json=chat)  # no max_tokens: fills the context, within the limit
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 8


# --- concurrency per key ----------------------------------------------------------------------------------
def test_a_key_may_hold_at_most_its_share_of_sequences(server, slow_engine):
    surge = slow_engine
    long = {"model": MODEL, "prompt": PROMPT, "max_tokens": 8, "ignore_eos": True, "stream": True}
    short = {**long, "stream": False, "max_tokens": 1}
    with client(server) as c:
        r = c.post("/v1/completions", json={**long, "stream": False, "prompt": [PROMPT, PROMPT], "n": 2})
        assert r.status_code == 400 and r.json()["error"]["code"] == "too_many_sequences"  # 4 > 3: never fits
    outcomes: list[int] = []

    def hold(n: int) -> None:  # key 0 streams n sequences
        with client(server) as c, c.stream("POST", "/v1/completions", json={**long, "n": n}) as r:
            outcomes.append(sum(1 for line in r.iter_lines() if line == "data: [DONE]"))

    holders = [threading.Thread(target=hold, args=(n,)) for n in (1, 2)]
    for t in holders:
        t.start()
    try:
        # both calls admitted: 3 sequences of key 0 in flight (each call takes >= 8 slowed steps, so both are, whether
        # the engine runs them side by side or one after the other)
        assert wait_until(lambda: server.api.gate.in_flight("key:0") == 3)
        with client(server) as c:
            r = c.post("/v1/completions", json=short)
            assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limit_exceeded"
            assert int(r.headers["retry-after"]) > 0
        with client(server, KEYS[1]) as c:  # another key has its own share
            assert c.post("/v1/completions", json=short).status_code == 200
    finally:
        for t in holders:
            t.join(60)
    assert outcomes == [1, 1]  # the held streams completed normally
    with client(server) as c:  # and key 0's share is back
        assert c.post("/v1/completions", json=short).status_code == 200
    assert wait_until(lambda: all_pages_free(surge))


# --- clients that do not read -----------------------------------------------------------------------------
def asgi_request(body: dict) -> tuple[dict, callable]:
    scope = {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/v1/completions", "raw_path": b"/v1/completions", "query_string": b"",
        "root_path": "", "headers": [(b"content-type", b"application/json")], "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
    }  # fmt: skip
    sent = {"body": False}

    async def receive() -> dict:
        if not sent["body"]:
            sent["body"] = True
            return {"type": "http.request", "body": json.dumps(body).encode(), "more_body": False}
        await asyncio.Event().wait()  # the client never disconnects
        return {"type": "http.disconnect"}

    return scope, receive


async def call_with_a_client_that_stops_reading(app, body: dict, timeout: float) -> list[dict]:
    """The app answers ``body`` to a client whose socket stops taking data after the first chunk (uvicorn's send
    then blocks, as it does once the write buffers are full). Returns the messages sent before the stall."""
    scope, receive = asgi_request(body)
    messages: list[dict] = []

    async def send(message: dict) -> None:
        messages.append(message)
        if message["type"] == "http.response.body" and len(messages) > 2:
            await asyncio.Event().wait()  # blocked for good

    task = asyncio.ensure_future(app(scope, receive, send))
    done, _ = await asyncio.wait({task}, timeout=timeout)
    if not done:
        task.cancel()
    return messages


@pytest.fixture
def running_engine(surge):
    started_here = not surge.is_running
    surge.start()
    yield surge
    if started_here:
        surge.stop()


def test_a_client_that_stops_reading_is_aborted_after_the_stall_timeout(running_engine, monkeypatch):
    surge = slow_steps(running_engine, monkeypatch, 0.02)  # 100 tokens take >= 2 s: the stall comes first
    app = create_app(surge, MODEL, manage_engine=False, limits=ServerLimits(client_stall_timeout=0.3))
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 100, "ignore_eos": True, "stream": True}
    before = surge.engine.metrics.num_done
    t0 = time.monotonic()
    messages = asyncio.run(call_with_a_client_that_stops_reading(app, body, timeout=20))
    assert time.monotonic() - t0 < 15  # the app gave up on the client by itself
    assert messages[0]["status"] == 200
    assert wait_until(lambda: all_pages_free(surge))
    (ended,) = surge.engine.metrics.requests_frame().iloc[before:].itertuples()
    assert ended.finish_reason == "aborted" and ended.num_output_tokens < 100


def test_a_client_that_falls_too_far_behind_is_aborted_instead_of_buffered(running_engine, monkeypatch):
    surge = slow_steps(running_engine, monkeypatch, 0.02)
    limits = ServerLimits(stream_buffer_tokens=4, client_stall_timeout=60)
    app = create_app(surge, MODEL, manage_engine=False, limits=limits)
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 100, "ignore_eos": True, "stream": True, "n": 2}
    before = surge.engine.metrics.num_done
    asyncio.run(call_with_a_client_that_stops_reading(app, body, timeout=3))
    assert wait_until(lambda: all_pages_free(surge))
    ended = surge.engine.metrics.requests_frame().iloc[before:]
    assert len(ended) == 2 and (ended["finish_reason"] == "aborted").all()
    assert (ended["num_output_tokens"] < 100).all()  # generation stopped: at most ~4 deltas per choice buffered


# --- read timeouts ----------------------------------------------------------------------------------------
def test_slowloris_connections_are_closed_after_the_header_timeout(server):
    host, port = server.host, server.port
    partial = []
    for i in range(40):
        s = socket.create_connection((host, port))
        if i % 4:  # most send part of a request head, the rest nothing at all
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
        s.settimeout(5)
        partial.append(s)
    try:
        with client(server) as c:  # the server still serves meanwhile
            r = c.post("/v1/completions", json={"model": MODEL, "prompt": PROMPT, "max_tokens": 1})
            assert r.status_code == 200
        t0 = time.monotonic()
        for s in partial:
            assert s.recv(1024) == b""  # closed by the server
        assert time.monotonic() - t0 < 4
    finally:
        for s in partial:
            s.close()


def test_a_body_that_never_arrives_is_a_408(server):
    with socket.create_connection((server.host, server.port)) as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Authorization: Bearer sk-alpha\r\nContent-Length: 100\r\n\r\n{\"model\": ")  # fmt: skip
        s.settimeout(10)
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
            chunk = s.recv(4096)
            if not chunk:
                break
            reply += chunk
    head, _, payload = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408")
    assert json.loads(payload)["error"]["code"] == "request_timeout"
