"""Through the HTTP server: a request whose step raises fails alone with a 500 naming the error (or an error event
in its stream) while concurrent requests complete unchanged; a dead engine turns /health to 503 and stops the
server with exit status 1, so a supervisor restarts it."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from server_fixtures import all_pages_free, broken_surge, serving_fixtures  # noqa: E402

from odrive.core.sampling_params import SamplingParams  # noqa: E402
from odrive.server import BackgroundServer, create_app  # noqa: E402

MODEL = "tiny-faults"
POISON_SEED = 666
PROMPTS = ["The engine keeps a pool", "Children walked to school", "The old library had", "Numbers such as 1, 2"]

surge, server = serving_fixtures(MODEL, "srvfaults")


@pytest.fixture
def poisoned(surge, monkeypatch):
    """Executing any batch that holds a request seeded POISON_SEED raises (a kernel bug for one request)."""
    execute = surge.executor.execute

    def execute_or_raise(batch):
        if any(c.request.sampling_params.seed == POISON_SEED for c in batch):
            raise OverflowError("Python int too large to convert to C long")
        time.sleep(0.005)  # keeps the good requests in flight alongside the poisoned ones
        return execute(batch)

    monkeypatch.setattr(surge.executor, "execute", execute_or_raise)
    return surge


def test_a_poisoned_request_gets_a_500_and_concurrent_requests_are_unaffected(server, poisoned):
    surge = poisoned
    want = [r.text for r in surge.generate(PROMPTS, SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True))]
    good: dict[int, httpx.Response] = {}
    bad: dict[str, object] = {}

    def send_good(i: int) -> None:
        body = {"model": MODEL, "prompt": PROMPTS[i], "max_tokens": 12, "temperature": 0, "ignore_eos": True}
        good[i] = httpx.post(f"{server.url}/v1/completions", json=body, timeout=60)

    def send_bad() -> None:
        body = {"model": MODEL, "prompt": "The engine", "max_tokens": 12, "seed": POISON_SEED, "temperature": 0.8}
        bad["json"] = httpx.post(f"{server.url}/v1/completions", json=body, timeout=60)
        with httpx.stream("POST", f"{server.url}/v1/completions", json={**body, "stream": True}, timeout=60) as r:
            bad["events"] = [line for line in r.iter_lines() if line.startswith("data: ")]

    threads = [threading.Thread(target=send_good, args=(i,)) for i in range(len(PROMPTS))]
    threads.append(threading.Thread(target=send_bad))
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    response = bad["json"]
    assert response.status_code == 500
    error = response.json()["error"]
    assert error["code"] == "engine_error" and "OverflowError" in error["message"], error
    events = bad["events"]
    assert events[-1] == "data: [DONE]"
    failure = json.loads(events[-2][6:])["error"]
    assert failure["code"] == "engine_error" and "OverflowError" in failure["message"]
    assert [good[i].json()["choices"][0]["text"] for i in range(len(PROMPTS))] == want
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok"}
    assert all_pages_free(surge)


def test_a_dead_engine_makes_health_503_and_the_server_exit_with_status_1(tiny_checkpoint):
    broken = broken_surge(tiny_checkpoint, max_failed_steps=2)
    app = create_app(broken, MODEL)
    srv = BackgroundServer(app).start()
    try:
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            assert c.get("/health").status_code == 200
            body = {"model": MODEL, "prompt": "hi", "max_tokens": 2}
            for _ in range(2):  # each fails alone; two such steps in a row and the engine gives up
                r = c.post("/v1/completions", json=body)
                assert r.status_code == 500 and "device lost" in r.json()["error"]["message"]
        deadline = time.monotonic() + 30
        while srv.running and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not srv.running and srv.exit_code == 1  # the process would exit 1: a supervisor restarts it
    finally:
        srv.stop()
    # what /health answered in between (the same app, called directly)
    assert broken.failed

    async def health() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app") as c:
            return await c.get("/health")

    r = asyncio.run(health())
    assert r.status_code == 503 and r.json()["status"] == "failed" and "device lost" in r.json()["error"]
