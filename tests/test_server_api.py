"""The OpenAI-compatible server through the official ``openai`` client and raw HTTP: shapes, streaming,
sampling parameters, bad input, client disconnects and Prometheus metrics."""

from __future__ import annotations

import json
import threading
import time

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402
from server_fixtures import all_pages_free, serving_fixtures, slow_steps, wait_until  # noqa: E402

import odrive  # noqa: E402
from odrive.core.sampling_params import SamplingParams  # noqa: E402
from odrive.server import BackgroundServer, create_app  # noqa: E402

MODEL = "tiny-llama"
PROMPT = "The engine keeps a pool"


surge, server = serving_fixtures(MODEL, "api")


@pytest.fixture(scope="module")
def client(server):
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="sk-test", max_retries=0, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def offline(surge, prompt, **params) -> odrive.GenerationResult:
    return surge.generate([prompt], SamplingParams(**params))[0]


def chat_ids(surge, messages) -> list[int]:
    text = surge.processor.apply_chat_template(messages, add_generation_prompt=True)
    return surge.processor.encode(text, add_special_tokens=False)


def metrics(http) -> dict[str, float]:
    """Every sample of /metrics as ``name{labels}`` -> value (labels sorted)."""
    out = {}
    for family in text_string_to_metric_families(http.get("/metrics").text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}"] = s.value
    return out


# --- plain routes ---------------------------------------------------------------------------------------
def test_health_ready_and_models(http, client):
    assert http.get("/health").json() == {"status": "ok"}
    assert http.get("/ready").status_code == 200
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]


def test_ready_is_503_and_generation_refused_while_the_engine_is_stopped(tiny_checkpoint):
    idle = odrive.vSurge.create_odriver(
        model=tiny_checkpoint,
        processor=tiny_checkpoint,
        max_prefill_length=16,
        page_size=4,
        num_pages=16,
        max_concurrent_decodes=2,
    )
    with BackgroundServer(create_app(idle, MODEL, manage_engine=False)) as srv, httpx.Client(base_url=srv.url) as c:
        assert c.get("/health").status_code == 200
        ready = c.get("/ready")
        assert ready.status_code == 503 and ready.json()["error"]["code"] == "engine_not_running"
        r = c.post("/v1/completions", json={"model": MODEL, "prompt": "hi"})
        assert r.status_code == 503 and r.json()["error"]["type"] == "server_error"
    assert not idle.engine.has_unfinished


# --- completions ----------------------------------------------------------------------------------------
def test_completion_matches_offline_greedy(client, surge):
    want = offline(surge, PROMPT, max_tokens=10, temperature=0.0, ignore_eos=True)
    before = int(time.time())
    r = client.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=10, temperature=0, extra_body={"ignore_eos": True}
    )
    assert r.object == "text_completion" and r.id.startswith("cmpl-") and r.model == MODEL
    assert before - 1 <= r.created <= time.time() + 1
    assert len(r.choices) == 1 and r.choices[0].index == 0
    assert r.choices[0].text == want.text and r.choices[0].finish_reason == "length"
    n_prompt = len(surge.processor.encode(PROMPT))
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (n_prompt, 10, n_prompt + 10)


def test_completion_stream_concatenates_to_the_full_text(client, surge):
    want = offline(surge, PROMPT, max_tokens=12, temperature=0.0, ignore_eos=True)
    chunks = list(
        client.completions.create(
            model=MODEL,
            prompt=PROMPT,
            max_tokens=12,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
    )
    assert len({c.id for c in chunks}) == 1 and all(c.object == "text_completion" for c in chunks)
    text_chunks = [c for c in chunks if c.choices]
    assert "".join(c.choices[0].text for c in text_chunks) == want.text
    assert [c.choices[0].finish_reason for c in text_chunks][-1] == "length"
    assert all(c.choices[0].finish_reason is None for c in text_chunks[:-1])
    assert len(text_chunks) > 3  # incremental, not one blob
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12


def test_token_id_prompt_and_prompt_batches(client, surge):
    ids = surge.processor.encode("Children walked to school")
    want = offline(surge, ids, max_tokens=6, temperature=0.0)
    r = client.completions.create(model=MODEL, prompt=ids, max_tokens=6, temperature=0)
    assert r.choices[0].text == want.text and r.usage.prompt_tokens == len(ids)
    prompts = ["The old library", "Numbers such as"]
    batch = client.completions.create(model=MODEL, prompt=prompts, max_tokens=5, temperature=0)
    assert [c.text for c in batch.choices] == [offline(surge, p, max_tokens=5, temperature=0.0).text for p in prompts]
    assert [c.index for c in batch.choices] == [0, 1]


def test_n_choices_use_distinct_seeds_derived_from_seed(client, surge):
    kw = dict(model=MODEL, prompt="The engine", max_tokens=8, temperature=1.0, top_p=0.95, seed=11, n=3)
    r = client.completions.create(**kw, extra_body={"top_k": 50, "ignore_eos": True})
    texts = [c.text for c in sorted(r.choices, key=lambda c: c.index)]
    assert [c.index for c in sorted(r.choices, key=lambda c: c.index)] == [0, 1, 2]
    want = [offline(surge, "The engine", max_tokens=8, temperature=1.0, top_p=0.95, top_k=50, seed=11 + i,
                    ignore_eos=True).text for i in range(3)]  # fmt: skip
    assert texts == want
    assert len(set(texts)) > 1  # distinct seeds, distinct samples
    assert r.usage.prompt_tokens == len(surge.processor.encode("The engine"))  # counted once, not per choice
    assert r.usage.completion_tokens == 24


def test_stop_strings_cut_the_text_streamed_or_not(client, surge):
    full = offline(surge, PROMPT, max_tokens=16, temperature=0.0, ignore_eos=True)
    piece = next(p for p in (surge.processor.decode([t]) for t in full.token_ids[2:]) if p.strip() and p.isprintable())
    for stop in (piece, [piece, "never-produced"]):
        kw = dict(model=MODEL, prompt=PROMPT, max_tokens=16, temperature=0, stop=stop, extra_body={"ignore_eos": True})
        r = client.completions.create(**kw)
        assert r.choices[0].finish_reason == "stop"
        assert r.choices[0].text == full.text[: full.text.find(piece)]
        streamed = list(client.completions.create(**kw, stream=True))
        assert "".join(c.choices[0].text for c in streamed) == r.choices[0].text
        assert streamed[-1].choices[0].finish_reason == "stop"


def test_continuous_usage_stats_stream_one_chunk_per_token(http, surge):
    body = {
        "model": MODEL,
        "prompt": PROMPT,
        "max_tokens": 7,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"continuous_usage_stats": True, "include_usage": True},
    }
    with http.stream("POST", "/v1/completions", json=body) as r:
        chunks = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    counts = [c["usage"]["completion_tokens"] for c in chunks if c["choices"] and not c["choices"][0]["finish_reason"]]
    assert counts[:7] == list(range(1, 8)) and set(counts) == set(range(1, 8))
    assert chunks[-2]["choices"][0]["finish_reason"] == "length" and chunks[-2]["usage"]["completion_tokens"] == 7
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 7


# --- chat -------------------------------------------------------------------------------------------------
MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Where is the station?"}]


def test_chat_uses_the_chat_template(client, surge):
    want = offline(surge, chat_ids(surge, MESSAGES), max_tokens=8, temperature=0.0)
    r = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8, temperature=0)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-") and r.model == MODEL
    msg = r.choices[0].message
    assert msg.role == "assistant" and msg.content == want.text
    assert r.choices[0].finish_reason == want.finish_reason
    assert r.usage.prompt_tokens == len(chat_ids(surge, MESSAGES))
    assert r.usage.completion_tokens == len(want.token_ids)


def test_chat_stream(client, surge):
    want = offline(surge, chat_ids(surge, MESSAGES), max_tokens=10, temperature=0.0, ignore_eos=True)
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=MESSAGES, max_tokens=10, temperature=0, stream=True, extra_body={"ignore_eos": True}
        )
    )
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == want.text
    assert chunks[-1].choices[0].finish_reason == "length"


def test_chat_without_max_tokens_may_fill_the_context(http, surge):
    r = http.post(
        "/v1/chat/completions", json={"model": MODEL, "messages": MESSAGES, "temperature": 0, "ignore_eos": True}
    )
    assert r.status_code == 200, r.text
    usage = r.json()["usage"]
    assert usage["total_tokens"] == surge.engine.scheduler.config.max_model_len


# --- bad input --------------------------------------------------------------------------------------------
BAD = [  # (endpoint, body, status, param, message fragment)
    ("/v1/completions", b"{not json", 400, None, "not valid JSON"),
    ("/v1/completions", b"[1, 2]", 400, None, "JSON object"),
    ("/v1/completions", {"model": "gpt-nope", "prompt": "hi"}, 404, "model", "does not exist"),
    ("/v1/completions", {"prompt": "hi"}, 400, "model", "Field required"),
    ("/v1/completions", {"model": MODEL, "prompt": "hi", "max_tokens": -3}, 400, "max_tokens", "greater than"),
    ("/v1/completions", {"model": MODEL, "prompt": ""}, 400, "prompt", "empty prompt"),
    ("/v1/completions", {"model": MODEL, "prompt": []}, 400, "prompt", "empty prompt"),
    ("/v1/completions", {"model": MODEL, "prompt": [5, 100_000]}, 400, "prompt", "outside the vocabulary"),
    ("/v1/completions", {"model": MODEL, "prompt": "word " * 100}, 400, "prompt", "max_prefill_length"),
    ("/v1/completions", {"model": MODEL, "prompt": "hi", "max_tokens": 1000}, 400, "max_tokens", "max_model_len"),
    ("/v1/completions", {"model": MODEL, "prompt": "hi", "n": 0}, 400, "n", "greater than"),
    ("/v1/completions", {"model": MODEL, "prompt": "hi", "n": 9}, 400, "n", "more than this server allows (8)"),
    ("/v1/completions", {"model": MODEL, "prompt": "hi", "temperature": -1}, 400, "temperature", "greater"),
    ("/v1/completions", {"model": MODEL, "prompt": "hi", "top_p": 0}, 400, "top_p", "greater than"),
    ("/v1/completions", {"model": MODEL, "prompt": "hi", "stop": [""]}, 400, "stop", "non-empty"),
    ("/v1/completions", {"model": MODEL, "prompt": "hi", "logprobs": 2}, 400, "logprobs", "not supported"),
    ("/v1/chat/completions", {"model": MODEL, "messages": []}, 400, "messages", "at least 1"),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"content": "x"}]}, 400, "messages.0.role", "required"),
    ("/v1/chat/completions", {"model": "nope", "messages": MESSAGES}, 404, "model", "does not exist"),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "w " * 80}]}, 400,
     "messages", "max_prefill_length"),
]  # fmt: skip


def test_bad_input_gets_4xx_and_an_error_body_without_disturbing_in_flight_requests(http, server, slow_engine):
    surge = slow_engine
    want = offline(surge, PROMPT, max_tokens=60, temperature=0.0, ignore_eos=True)
    got: dict[str, object] = {}

    def in_flight() -> None:
        body = {
            "model": MODEL,
            "prompt": PROMPT,
            "max_tokens": 60,
            "temperature": 0,
            "ignore_eos": True,
            "stream": True,
        }
        with httpx.Client(base_url=server.url, timeout=60) as c, c.stream("POST", "/v1/completions", json=body) as r:
            got["chunks"] = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]

    worker = threading.Thread(target=in_flight)
    worker.start()
    assert wait_until(lambda: surge.engine.has_unfinished, timeout=30)
    for endpoint, body, status, param, fragment in BAD:
        kw = (
            {"content": body, "headers": {"content-type": "application/json"}}
            if isinstance(body, bytes)
            else {"json": body}
        )
        r = http.post(endpoint, **kw)
        assert r.status_code == status, (body, r.text)
        error = r.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["type"] == "invalid_request_error"
        assert error["param"] == param and fragment in error["message"], (body, error)
        if status == 404:
            assert error["code"] == "model_not_found"
    worker.join(60)
    text = "".join(c["choices"][0]["text"] for c in got["chunks"])
    assert text == want.text and got["chunks"][-1]["choices"][0]["finish_reason"] == "length"
    assert wait_until(lambda: all_pages_free(surge))


def test_unknown_route_wrong_method_and_oversized_body_get_error_bodies(http):
    assert http.get("/v1/nothing").json()["error"]["code"] == "not_found"
    r = http.get("/v1/completions")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
    big = b'{"model": "x", "prompt": "' + b"a" * (9 * 2**20) + b'"}'
    r = http.post("/v1/completions", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"


# --- client disconnects ----------------------------------------------------------------------------------
@pytest.fixture
def slow_engine(surge, monkeypatch):
    """Each engine step takes >= 20 ms, so a 100-token request is surely still running when its client leaves."""
    return slow_steps(surge, monkeypatch, 0.02)


def aborted(http) -> float:
    return metrics(http).get("odrive_requests_total{finish_reason=aborted,state=aborted}", 0.0)


def test_client_disconnect_mid_stream_aborts_and_frees_pages(http, server, slow_engine):
    surge = slow_engine
    before = aborted(http)
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 100, "ignore_eos": True, "stream": True}
    with httpx.Client(base_url=server.url, timeout=60) as c, c.stream("POST", "/v1/completions", json=body) as r:
        first = next(r.iter_lines())
        assert first.startswith("data: {")
        assert surge.engine.has_unfinished and surge.num_free_pages < surge.num_usable_pages
    # leaving the block closed the connection after the first chunk
    assert wait_until(lambda: all_pages_free(surge)), "the abandoned request still holds pages"
    assert wait_until(lambda: aborted(http) == before + 1)


def test_client_disconnect_while_waiting_for_a_non_streamed_reply_aborts(http, server, slow_engine):
    surge = slow_engine
    before = aborted(http)
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 100, "ignore_eos": True, "n": 2}
    with pytest.raises(httpx.ReadTimeout), httpx.Client(base_url=server.url, timeout=0.5) as c:
        c.post("/v1/completions", json=body)
    assert wait_until(lambda: all_pages_free(surge))
    assert wait_until(lambda: aborted(http) == before + 2)


# --- metrics ----------------------------------------------------------------------------------------------
def test_metrics_parse_and_counters_move(http, client, surge):
    before = metrics(http)
    client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=5, temperature=0, extra_body={"ignore_eos": True})
    http.post("/v1/completions", json={"model": MODEL, "prompt": ""})  # rejected
    after = metrics(http)

    def moved(key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert moved("odrive_requests_total{finish_reason=length,state=finished}") == 1
    assert moved("odrive_requests_total{finish_reason=rejected,state=rejected}") == 1
    assert moved("odrive_generation_tokens_total{}") == 5
    assert moved("odrive_prompt_tokens_total{}") == len(surge.processor.encode(PROMPT))
    for hist in ("time_to_first_token", "time_per_output_token", "e2e_request_latency"):
        assert moved(f"odrive_{hist}_seconds_count{{}}") == 1
        assert after[f"odrive_{hist}_seconds_sum{{}}"] > 0
    assert moved("odrive_engine_steps_total{}") >= 5
    assert moved("odrive_http_requests_total{path=/v1/completions,status=200}") == 1
    assert moved("odrive_http_requests_total{path=/v1/completions,status=400}") == 1
    assert after["odrive_kv_pages_total{}"] == surge.num_usable_pages
    assert after["odrive_kv_pages_free{}"] == surge.num_usable_pages and after["odrive_kv_pages_used{}"] == 0
    assert after["odrive_requests_waiting{}"] == 0 and after["odrive_requests_running{}"] == 0
    assert "odrive_preemptions_total{}" in after
    assert "odrive_prefix_cache_hit_rate{}" not in after  # the free-list allocator has no prefix_stats()


def test_metrics_report_pages_and_queue_depth_while_busy(http, server, slow_engine):
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 30, "ignore_eos": True}
    threads = [threading.Thread(target=lambda: httpx.post(f"{server.url}/v1/completions", json=body, timeout=60))
               for _ in range(10)]  # fmt: skip
    for t in threads:
        t.start()
    try:
        queues = ("odrive_requests_running{}", "odrive_requests_waiting{}")
        assert wait_until(lambda: [metrics(http)[q] for q in queues] == [8, 2])
        busy = metrics(http)
        assert busy["odrive_kv_pages_used{}"] >= 8 * 2  # 8 running requests, >= 6 prompt tokens each
        assert busy["odrive_kv_pages_used{}"] + busy["odrive_kv_pages_free{}"] == busy["odrive_kv_pages_total{}"]
    finally:
        for t in threads:
            t.join(60)
    assert wait_until(lambda: metrics(http)["odrive_kv_pages_used{}"] == 0)


def test_prefix_stats_are_exported_when_the_allocator_has_them(surge):
    from odrive.server.metrics import ServerMetrics

    class Stats:
        hits, queries = 3, 4

    m = ServerMetrics()
    m.prefix.update(type("Alloc", (), {"prefix_stats": lambda self: Stats()})())
    text = __import__("prometheus_client").generate_latest(m.registry).decode()
    samples = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples if not s.labels}
    assert samples["odrive_prefix_cache_hit_rate"] == 0.75


def test_the_prefix_cache_allocator_hit_rate_is_exported():
    from odrive.allocators import ALLOCATORS, make_allocator
    from odrive.server.metrics import ServerMetrics

    if "prefix-cache" not in ALLOCATORS.names():
        pytest.skip("no prefix-cache allocator in this checkout")
    m = ServerMetrics()
    m.prefix.update(make_allocator("prefix-cache", num_pages=8, page_size=4))
    text = __import__("prometheus_client").generate_latest(m.registry).decode()
    samples = {(s.name, tuple(s.labels.values())): s.value for f in text_string_to_metric_families(text)
               for s in f.samples}  # fmt: skip
    assert samples[("odrive_prefix_cache_hit_rate", ())] == 0.0
    assert ("odrive_prefix_cache_stat", ("queries",)) in samples
