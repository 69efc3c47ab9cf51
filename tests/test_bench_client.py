"""odrive bench's client against a scripted OpenAI-compatible server: TTFT, inter-token gaps and token counts as
vllm bench serve measures them, failed requests counted with their error, and one-line CLI errors."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

uvicorn = pytest.importorskip("uvicorn")
from starlette.applications import Starlette  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import JSONResponse, StreamingResponse  # noqa: E402
from starlette.routing import Route  # noqa: E402

from odrive.bench.client import RequestSpec, replay_async  # noqa: E402
from odrive.cli import main as odrive_main  # noqa: E402

FIRST, GAP = 0.05, 0.02  # the scripted server's time to first token and between tokens


async def completions(request: Request):
    body = await request.json()
    if len(body["prompt"]) > 50:
        return JSONResponse({"error": {"message": "prompt too long", "type": "invalid_request_error"}}, 400)
    n, usage_each = body["max_tokens"], body["stream_options"]["continuous_usage_stats"]
    prompt = len(body["prompt"])

    async def events():
        for k in range(n):
            await asyncio.sleep(FIRST if k == 0 else GAP)
            chunk = {"choices": [{"index": 0, "text": "x", "finish_reason": None}]}
            if usage_each:
                chunk["usage"] = {"prompt_tokens": prompt, "completion_tokens": k + 1}
            yield f"data: {json.dumps(chunk)}\n\n"
        finish = {"choices": [{"index": 0, "text": "", "finish_reason": "length"}]}
        if usage_each:
            finish["usage"] = {"prompt_tokens": prompt, "completion_tokens": n}
        yield f"data: {json.dumps(finish)}\n\n"
        yield f"data: {json.dumps({'choices': [], 'usage': {'prompt_tokens': prompt, 'completion_tokens': n}})}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


async def models(request: Request):
    return JSONResponse({"object": "list", "data": [{"id": "scripted", "object": "model"}]})


@pytest.fixture(scope="module")
def server_url():
    app = Starlette(routes=[Route("/v1/completions", completions, methods=["POST"]), Route("/v1/models", models)])
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    thread.join(10)


def test_timings_follow_the_stream(server_url: str) -> None:
    specs = [RequestSpec(0.0, [1, 2, 3], 5), RequestSpec(0.1, list(range(40)), 1), RequestSpec(0.2, [0] * 60, 4)]
    run, warm = asyncio.run(replay_async(server_url, "scripted", specs))
    assert warm is None
    frame = run.requests_frame()
    assert list(frame["status"]) == ["finished", "finished", "failed"]
    assert list(frame["num_output_tokens"][:2]) == [5, 1] and list(frame["num_prompt_tokens"]) == [3, 40, 60]
    assert "HTTP 400" in frame["message"][2] and "prompt too long" in frame["message"][2]
    assert frame["scheduled_time"].tolist() == [0.0, 0.1, 0.2]
    assert (frame["send_lag"].dropna().abs() < 0.05).all()
    assert FIRST <= frame["ttft"][0] < FIRST + 0.1
    # one gap per later token (the finish and usage chunks carry none); the k-th token comes k gaps after the first
    gaps = run.timings[0].gaps
    assert len(gaps) == 4 and min(gaps) > 0 and sum(gaps) >= 4 * GAP
    assert frame["tpot"][0] == pytest.approx((frame["e2e"][0] - frame["ttft"][0]) / 4)
    assert len(run.itl()) == 4 and run.timings[1].gaps == []
    assert run.duration >= 0.2  # the last request is sent at 0.2 s


def test_the_cli_writes_results_and_requests(server_url: str, tmp_path: Path, capsys) -> None:
    spec = "poisson:rate=50,n=12,prompt=uniform(5,70),output=uniform(1,6)"
    code = odrive_main(["bench", "--base-url", server_url, "--workload", spec, "--vocab-size", "100",
                        "--out", str(tmp_path), "--no-progress", "--metric-percentiles", "50,99", "--warmup", "2",
                        "--goodput", "ttft:1000"])  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "warm-up: 2 requests" in out and "mean_itl_ms" in out
    result = json.loads((tmp_path / "results.json").read_text())
    rows = pd.read_csv(tmp_path / "requests.csv")
    assert result["backend"] == "odrive-bench" and result["model_id"] == "scripted"
    assert result["completed"] + result["failed"] == 12
    assert result["failed"] == int((rows["num_prompt_tokens"] > 50).sum())
    done = rows[rows["status"] == "finished"]
    assert result["total_output_tokens"] == done["max_tokens"].sum() == done["num_output_tokens"].sum()
    assert result["request_goodput"] == pytest.approx(result["request_throughput"])
    assert result["mean_itl_ms"] >= 1000 * GAP * 0.9 and result["median_ttft_ms"] >= 1000 * FIRST
    assert {"p50_ttft_ms", "p99_itl_ms", "median_tpot_ms", "std_e2el_ms"} <= result.keys()


def test_cli_errors_are_one_line(server_url: str, tmp_path: Path, capsys) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    assert odrive_main(["bench", "--base-url", dead, "--workload", "poisson:rate=1,n=2,prompt=4,output=2",
                        "--out", str(tmp_path)]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot read" in err[0] and "/v1/models" in err[0]
    assert odrive_main(["bench", "--base-url", server_url, "--workload", "poisson:rate=9,n=3,prompt=80,output=2",
                        "--out", str(tmp_path), "--no-progress"]) == 1  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "all 3 requests failed" in err[0] and "prompt too long" in err[0]
    assert (tmp_path / "results.json").exists()  # written all the same
    assert odrive_main(["bench", "--base-url", server_url, "--workload", "nope:1", "--out", str(tmp_path)]) == 2
    assert "unknown workload kind" in capsys.readouterr().err
