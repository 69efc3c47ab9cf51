"""SIGTERM with requests in flight: ``odrive serve`` stops admitting (503 with Retry-After), lets in-flight requests
finish for up to --shutdown-timeout, ends the rest with an error (an SSE error event and [DONE], or a JSON 503),
and exits 0 without a traceback."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from server_fixtures import wait_ready  # noqa: E402

MODEL = "tiny-term"
STEP_S = 0.01  # each engine step of the served process takes at least this long: long requests outlast the drain
# ``odrive serve`` itself, with the executor slowed down (a subprocess, so SIGTERM reaches a real main thread)
SERVE = f"""
import sys, time
from odrive.runtime.jax_executor import JaxExecutor
execute = JaxExecutor.execute
def slow(self, batch):
    time.sleep({STEP_S})
    return execute(self, batch)
JaxExecutor.execute = slow
from odrive.cli import main
sys.exit(main(sys.argv[1:]))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sse(url: str, body: dict, out: dict, first: threading.Event) -> None:
    with httpx.stream("POST", f"{url}/v1/completions", json={**body, "stream": True}, timeout=60) as r:
        out["status"] = r.status_code
        out["events"] = []
        for line in r.iter_lines():
            if line.startswith("data: "):
                out["events"].append(line[6:])
                first.set()


def test_sigterm_drains_in_flight_requests_then_exits_0(tiny_checkpoint, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-c", SERVE, "serve", "--model", str(tiny_checkpoint), "--port", str(port),
           "--served-model-name", MODEL, "--max-prefill-length", "16", "--max-length", "400", "--page-size", "16",
           "--num-pages", "100", "--prefill-lengths", "16", "--max-concurrent-decodes", "4",
           "--shutdown-timeout", "1.5", "--log-level", "warning"]  # fmt: skip
    stderr = tmp_path / "stderr.txt"
    with stderr.open("w") as err:
        proc = subprocess.Popen(cmd, env={**os.environ, "JAX_PLATFORMS": "cpu"}, stdout=err, stderr=err)
    try:
        wait_ready(proc, url, timeout=120, log=stderr)
        long = {"model": MODEL, "prompt": "The engine keeps", "max_tokens": 300, "ignore_eos": True, "temperature": 0}
        short = {**long, "max_tokens": 20}
        httpx.post(f"{url}/v1/completions", json=short, timeout=60).raise_for_status()  # compile the step shapes

        results: dict[str, dict] = {name: {} for name in ("long", "short", "plain")}
        firsts = {name: threading.Event() for name in results}

        def plain() -> None:
            r = httpx.post(f"{url}/v1/completions", json=long, timeout=60)
            results["plain"].update(status=r.status_code, body=r.json(), headers=r.headers)

        threads = [threading.Thread(target=sse, args=(url, long, results["long"], firsts["long"])),
                   threading.Thread(target=plain)]  # fmt: skip
        for t in threads:
            t.start()
        assert firsts["long"].wait(60)
        threads.append(threading.Thread(target=sse, args=(url, short, results["short"], firsts["short"])))
        threads[-1].start()
        assert firsts["short"].wait(60)

        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        refused = httpx.post(f"{url}/v1/completions", json=short, timeout=10)  # a new call while draining
        ready = httpx.get(f"{url}/ready", timeout=10)
        for t in threads:
            t.join(60)
        code = proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = stderr.read_text()
    assert code == 0, log
    assert "Traceback" not in log and "Exception in ASGI" not in log, log
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "server_shutting_down"
    assert int(refused.headers["retry-after"]) > 0 and ready.status_code == 503
    # the short stream was in flight at SIGTERM and finished normally
    short_events = results["short"]["events"]
    assert short_events[-1] == "[DONE]" and json.loads(short_events[-2])["choices"][0]["finish_reason"] == "length"
    # the long stream outlasted --shutdown-timeout: an error event, then [DONE]
    events = results["long"]["events"]
    assert events[-1] == "[DONE]", events[-3:]
    error = json.loads(events[-2])["error"]
    assert error["code"] == "server_shutting_down" and "shut down before this request finished" in error["message"]
    assert 0 < sum(1 for e in events if e.startswith('{"id"')) < 300
    # the non-streamed long request: a JSON 503
    assert results["plain"]["status"] == 503
    assert results["plain"]["body"]["error"]["code"] == "server_shutting_down"
