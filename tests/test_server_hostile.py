"""Hostile request bodies against the OpenAI-compatible server: every one found to break it gets a 4xx with an
OpenAI-style error body, a property test generates many more from the request schema (never a 5xx), and a load of
good requests with hostile ones mixed in completes with the quiet run's greedy outputs and every page free."""

from __future__ import annotations

import asyncio
import json
import random

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from server_fixtures import all_pages_free, mixed_requests, run_concurrently, serving_fixtures  # noqa: E402

from odrive.core.sampling_params import SamplingParams  # noqa: E402
from odrive.server.limits import ServerLimits  # noqa: E402
from odrive.server.protocol import ChatCompletionRequest, CompletionRequest  # noqa: E402

MODEL = "tiny-hostile"
KNOWN = {"model": MODEL, "prompt": "The engine keeps a pool", "max_tokens": 8, "temperature": 0, "ignore_eos": True}
LIMITS = ServerLimits(max_tokens=8)  # a chat without max_tokens is capped too: generated bodies stay quick


surge, server = serving_fixtures(MODEL, "hostile", LIMITS)


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def known_text(surge) -> str:
    return surge.generate([KNOWN["prompt"]], SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True))[0].text


def raw(body: str) -> bytes:
    return body.encode("utf-8", "surrogatepass")


C, CHAT = "/v1/completions", "/v1/chat/completions"


def text_body(fields: str) -> str:
    """A body written as JSON text (what json.dumps cannot produce: lone surrogates, NaN, deep nesting)."""
    return '{"model": "' + MODEL + '", ' + fields + "}"


ISSUE_CASES = [  # each was a 500, a dead engine, or accepted though wrong
    (C, {"model": MODEL, "prompt": "hi", "max_tokens": 4, "top_k": 2147483648}, "top_k"),
    (C, {"model": MODEL, "prompt": "hi", "max_tokens": 4, "top_k": 1e20}, "top_k"),
    (C, {"model": MODEL, "prompt": "hi", "max_tokens": 4, "seed": 10**30}, "seed"),
    (C, {"model": MODEL, "prompt": "hi", "max_tokens": 4, "stop_token_ids": [10**20]}, "stop_token_ids.0"),
    (C, {"model": MODEL, "prompt": "hi", "max_tokens": 4, "stop_token_ids": [100_000]}, "stop_token_ids"),
    (C, {"model": MODEL, "prompt": "hi", "max_tokens": True}, "max_tokens"),
    (C, {"model": MODEL, "prompt": "hi", "temperature": True}, "temperature"),
    (C, {"model": MODEL, "prompt": "hi", "stream": "yes"}, "stream"),
    (C, {"model": MODEL, "prompt": [True]}, "prompt"),
    (C, {"model": MODEL, "prompt": "hi", "n": 2.0}, "n"),
    (CHAT, {"model": MODEL, "messages": [{"role": "alien", "content": "hi"}]}, "messages.0.role"),
    (CHAT, {"model": MODEL, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages.0.content"),
    (C, text_body('"prompt": "\\ud800"'), None),  # a lone UTF-16 surrogate
    (CHAT, text_body('"messages": [{"role": "user", "content": "a\\udfffb"}]'), None),
    (C, text_body('"prompt": ' + "[" * 1000 + "]" * 1000), None),  # nested 1,000 deep
    (C, text_body('"prompt": "hi", "max_tokens": ' + "9" * 4300), "max_tokens"),  # 4,300 digits
    (C, text_body('"prompt": "hi", "max_tokens": ' + "9" * 5000), None),
    (C, text_body('"prompt": "hi", "temperature": NaN'), "temperature"),
    (C, b'{"model": "tiny-hostile", "prompt": "\xed\xa0\x80"}', None),  # a surrogate encoded in UTF-8
]


def case_id(case: tuple) -> str:
    path, body, param = case
    text = body if isinstance(body, str | bytes) else json.dumps(body)
    return f"{path.rsplit('/', 1)[-1]}:{param}:{len(text)}"


@pytest.mark.parametrize(("path", "body", "param"), ISSUE_CASES, ids=[case_id(c) for c in ISSUE_CASES])
def test_hostile_bodies_are_a_400_naming_the_field(http, surge, known_text, path, body, param):
    content = raw(body) if isinstance(body, str) else body if isinstance(body, bytes) else json.dumps(body).encode()
    r = http.post(path, content=content, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    assert error["param"] == param, error
    if param is None:
        assert error["code"] == "invalid_json", error
    # the same keep-alive connection still serves, and the engine answers as before
    again = http.post(C, json=KNOWN)
    assert again.status_code == 200 and again.json()["choices"][0]["text"] == known_text
    assert all_pages_free(surge)


# --- bodies generated from the schema ---------------------------------------------------------------------
JUNK = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**30), 10**30) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)  # fmt: skip
HOSTILE_TEXT = st.text(max_size=12) | st.sampled_from(
    ["\ud800", "a\udc00", "\x00", "\ufffd" * 3, "hi", "The engine", "</s>", "<s>", "\u202e", "😀" * 4]
)
HUGE_INTS = st.sampled_from([2**31, 2**31 - 1, 2**63, 2**64, -(2**63) - 1, 10**30, -1, 0, 10**4299])
SMALL = {"max_tokens": (1, 6), "max_completion_tokens": (1, 6), "n": (1, 2), "best_of": (1, 2)}


def mostly(valid: st.SearchStrategy, wrong: st.SearchStrategy) -> st.SearchStrategy:
    """``valid`` five times in six: most fields of a body stay valid, so whole bodies often reach the engine."""
    return st.one_of(valid, valid, valid, valid, valid, wrong)


def from_schema(node: dict, defs: dict, name: str = "", top: bool = False) -> st.SearchStrategy:
    """Values for one schema node: mostly valid (small, so generation stays quick), else just outside the bounds
    or of the wrong type entirely."""
    if "$ref" in node:
        return from_schema(defs[node["$ref"].rsplit("/", 1)[-1]], defs, name)
    if "anyOf" in node:
        return st.one_of([from_schema(n, defs, name) for n in node["anyOf"]])
    kind = node.get("type")
    lo, hi = node.get("minimum", node.get("exclusiveMinimum")), node.get("maximum", node.get("exclusiveMaximum"))
    if kind == "integer":
        lo, hi = SMALL.get(name, (lo if lo is not None else -5, hi if hi is not None else 50))
        wrong = HUGE_INTS | st.sampled_from([lo - 1, hi + 1, float(lo), True, "1"])
        return mostly(st.integers(lo, min(hi, lo + 50)), wrong)
    if kind == "number":
        lo, hi = lo if lo is not None else -3.0, hi if hi is not None else 3.0
        wrong = st.sampled_from([lo - 0.5, hi + 0.5, 1e308, -1e308, 10**400, True, "0.5"])
        return mostly(st.floats(lo, hi, allow_nan=False), wrong)
    if kind == "string":
        if "enum" in node or "const" in node:
            return mostly(st.sampled_from(node.get("enum", [node.get("const")])), HOSTILE_TEXT | JUNK)
        return mostly(st.just(MODEL) if name == "model" else HOSTILE_TEXT, HOSTILE_TEXT | JUNK)
    if kind == "boolean":
        return mostly(st.booleans(), st.sampled_from(["yes", "true", 0, 1]))
    if kind == "null":
        return st.none()
    if kind == "array":
        items = from_schema(node.get("items", {}), defs, name)
        return mostly(st.lists(items, min_size=node.get("minItems", 0), max_size=3), JUNK)
    if kind == "object" and "properties" in node:
        props = node["properties"]
        required = [k for k in node.get("required", []) if k in props]
        body = st.fixed_dictionaries(
            {k: from_schema(props[k], defs, k) for k in required},
            optional={k: from_schema(props[k], defs, k) for k in props if k not in required},
        )
        return body if top else mostly(body, JUNK)
    if kind == "object":
        values = from_schema(node.get("additionalProperties", {}), defs, name)
        return mostly(st.dictionaries(HOSTILE_TEXT, values, max_size=3), JUNK)
    return JUNK


def bodies(model: type) -> st.SearchStrategy:
    schema = model.model_json_schema()
    body = from_schema(schema, schema.get("$defs", {}), top=True)
    extra = st.dictionaries(st.text(max_size=8), JUNK, max_size=2)  # unknown fields, maybe a required one dropped
    drop = st.sampled_from([None] * 8 + ["model", "prompt", "messages"])
    top = mostly(st.tuples(body, extra, drop).map(_mutate), JUNK)  # a body that is no object at all, at times
    return top


def _mutate(parts: tuple) -> object:
    body, extra, drop = parts
    body = {**extra, **body}
    body.pop(drop, None)
    return body


ENDPOINT_BODIES = st.one_of(st.tuples(st.just(C), bodies(CompletionRequest)),
                            st.tuples(st.just(CHAT), bodies(ChatCompletionRequest)))  # fmt: skip


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(call=ENDPOINT_BODIES)
def test_generated_hostile_bodies_never_get_a_5xx(http, call):
    path, body = call
    content = json.dumps(body).encode()  # ensure_ascii: lone surrogates travel as \ud800 escapes
    with http.stream("POST", path, content=content, headers={"content-type": "application/json"}) as r:
        text = r.read().decode("utf-8", "replace")
    assert r.status_code < 500, (body, r.status_code, text)
    if r.status_code >= 400:
        assert set(json.loads(text)["error"]) == {"message", "type", "param", "code"}
    elif r.headers["content-type"].startswith("text/event-stream"):
        assert text.endswith("data: [DONE]\n\n") and '"error"' not in text, text


def test_after_the_generated_bodies_the_engine_answers_a_known_request_identically(http, surge, known_text):
    """Runs after the property test (file order): nothing it sent changed the engine."""
    r = http.post(C, json=KNOWN)
    assert r.status_code == 200 and r.json()["choices"][0]["text"] == known_text
    assert http.get("/health").json() == {"status": "ok"}
    assert all_pages_free(surge)


# --- load with hostile bodies mixed in --------------------------------------------------------------------
async def send_good(client: httpx.AsyncClient, spec: dict) -> tuple[str, str | None]:
    body: dict = {"model": MODEL, "max_tokens": spec["max_tokens"], "temperature": 0, "stream": spec["stream"]}
    if spec["chat"]:
        body["messages"] = [{"role": "user", "content": spec["text"]}]
    else:
        body["prompt"] = spec["text"]
    path = CHAT if spec["chat"] else C
    if not spec["stream"]:
        r = await client.post(path, json=body)
        assert r.status_code == 200, r.text
        choice = r.json()["choices"][0]
        return (choice["message"]["content"] if spec["chat"] else choice["text"]), choice["finish_reason"]
    text, reason = [], None
    async with client.stream("POST", path, json=body) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if line.startswith("data: {"):
                choice = json.loads(line[6:])["choices"][0]
                text.append((choice["delta"].get("content") or "") if spec["chat"] else choice["text"])
                reason = choice["finish_reason"] or reason
            elif line == "data: [DONE]":
                break
    return "".join(text), reason


async def send_hostile(client: httpx.AsyncClient, case: tuple) -> int:
    path, body, _ = case
    content = raw(body) if isinstance(body, str) else body if isinstance(body, bytes) else json.dumps(body).encode()
    r = await client.post(path, content=content, headers={"content-type": "application/json"})
    return r.status_code


async def mixed_load(url: str, jobs: list[tuple[str, object]], concurrency: int) -> list[object]:
    async def send(client: httpx.AsyncClient, job: tuple[str, object]) -> object:
        kind, spec = job
        return await (send_good(client, spec) if kind == "good" else send_hostile(client, spec))

    clients = [httpx.AsyncClient(base_url=url, timeout=120) for _ in range(concurrency)]
    try:
        return await run_concurrently(jobs, clients, send)
    finally:
        await asyncio.gather(*(c.aclose() for c in clients))


def test_load_with_hostile_bodies_mixed_in_matches_the_quiet_run(server, surge):
    good = mixed_requests(60, seed=1, max_new_tokens=8)
    hostile = [ISSUE_CASES[i % len(ISSUE_CASES)] for i in range(40)]
    jobs: list[tuple[str, object]] = [("good", g) for g in good] + [("hostile", h) for h in hostile]
    random.Random(7).shuffle(jobs)
    got = asyncio.run(mixed_load(server.url, jobs, concurrency=16))
    assert all(status == 400 for (kind, _), status in zip(jobs, got, strict=True) if kind == "hostile")
    assert all_pages_free(surge)
    processor = surge.processor
    prompts = [processor.encode(processor.apply_chat_template([{"role": "user", "content": g["text"]}]),
                                add_special_tokens=False) if g["chat"] else g["text"] for g in good]  # fmt: skip
    quiet = surge.generate(prompts, [SamplingParams(max_tokens=g["max_tokens"], temperature=0.0) for g in good])
    answers = [r for (kind, _), r in zip(jobs, got, strict=True) if kind == "good"]
    order = [g for kind, g in jobs if kind == "good"]
    want = {id(g): (w.text, w.finish_reason) for g, w in zip(good, quiet, strict=True)}
    mismatches = [(g, a, want[id(g)]) for g, a in zip(order, answers, strict=True) if a != want[id(g)]]
    assert not mismatches, mismatches[:3]
    assert all_pages_free(surge)
