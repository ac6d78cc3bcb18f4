"""Prometheus metrics and readiness, over ASGI: the real ingress app with in-process model servers
(the fake-engine LLM server and the real MiniLM, as in tests/test_api.py). Every check reads
``/metrics`` before and after real requests and compares."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from fastapi import Request
from fastapi.responses import JSONResponse
from prometheus_client.parser import text_string_to_metric_families

from deployments.api import create_app
from deployments.routing import EMBEDDING, LLM, ModelRoute, Router
from deployments.auth import KeyStore, parse_key_file
from deployments.config import LLMConfig, ServerConfig
from deployments.engines.fake import FakeEngine
from deployments.llm_server import LLMServer
from tests.local import LocalHandle, construct

CHAT_URL = "/v1/chat/completions"
STEP_S = 0.02  # the "slow" engine's time per token


def chat(content="hello", model="fake-llm", **extra):
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


def prompt_tokens(content: str) -> int:
    return len(f"user: {content}\nassistant: ".encode())  # the fake engine's byte tokenizer


@pytest.fixture(scope="module")
async def routes(servers):
    _, llm, embedder = servers

    async def fake(model_id: str, step_delay: float, interval_ms: float) -> ModelRoute:
        config = LLMConfig(id=model_id, source="unused", stream_interval_ms=interval_ms)
        return ModelRoute(model_id, LLM, LocalHandle(await construct(LLMServer, config, FakeEngine(step_delay=step_delay))))

    return [
        ModelRoute("fake-llm", LLM, LocalHandle(llm), aliases=["fake"]),
        ModelRoute("minilm", EMBEDDING, LocalHandle(embedder)),
        await fake("slow", STEP_S, 0),  # a token every STEP_S, each sent on its own
        await fake("coalesced", STEP_S, 60_000),  # every token after the first chunk sent together
    ]


def client_for(routes, keys: KeyStore | None = None, **server) -> httpx.AsyncClient:
    app = create_app(Router(routes), keys, ServerConfig(**server))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


@pytest.fixture(scope="module")
async def client(routes):
    async with client_for(routes) as c:
        yield c


class Scrape:
    """One parsed ``/metrics`` answer: sample values by name and labels."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.families = {f.name: f for f in text_string_to_metric_families(text)}
        self.values = {
            (s.name, frozenset(s.labels.items())): s.value for f in self.families.values() for s in f.samples
        }

    def get(self, name: str, **labels) -> float:
        return self.values.get((name, frozenset(labels.items())), 0.0)

    def has(self, name: str, **labels) -> bool:
        return (name, frozenset(labels.items())) in self.values


async def scrape(c: httpx.AsyncClient, **headers) -> Scrape:
    r = await c.get("/metrics", headers=headers)
    assert r.status_code == 200, r.text
    return Scrape(r.text)


def delta(before: Scrape, after: Scrape, name: str, **labels) -> float:
    return after.get(name, **labels) - before.get(name, **labels)


REQUESTS = "model_server_requests_total"
PROMPT = "model_server_prompt_tokens_total"
COMPLETION = "model_server_completion_tokens_total"
DURATION = "model_server_request_duration_seconds"
TTFT = "model_server_time_to_first_token_seconds"
ITL = "model_server_inter_token_latency_seconds"


async def test_format_and_content_type(client):
    r = await client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert "# TYPE model_server_requests_total counter" in r.text
    assert "# TYPE model_server_request_duration_seconds histogram" in r.text
    r = await client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert r.headers["content-type"].startswith("application/openmetrics-text") and r.text.endswith("# EOF\n")


async def test_a_chat_completion_counts_request_tokens_and_latency(client):
    before = await scrape(client)
    r = await client.post(CHAT_URL, json=chat("hello", model="fake"))  # an alias: labelled with the id
    assert r.status_code == 200
    usage = r.json()["usage"]
    after = await scrape(client)
    route = {"model": "fake-llm", "route": CHAT_URL}
    assert delta(before, after, REQUESTS, **route, status="200") == 1
    assert delta(before, after, PROMPT, model="fake-llm") == usage["prompt_tokens"] == prompt_tokens("hello")
    assert delta(before, after, COMPLETION, model="fake-llm") == usage["completion_tokens"] == 6
    assert delta(before, after, DURATION + "_count", **route) == 1
    assert delta(before, after, DURATION + "_sum", **route) > 0
    assert delta(before, after, TTFT + "_count", **route) == 0  # not a stream
    assert not after.has(REQUESTS, model="fake", route=CHAT_URL, status="200")


async def test_a_stream_counts_tokens_time_to_first_token_and_gaps(client):
    before = await scrape(client)
    r = await client.post(CHAT_URL, json=chat("hello", model="slow", stream=True))  # no usage asked for
    assert r.status_code == 200
    assert "usage" not in r.text and ": usage" not in r.text  # the ingress removed the model server's counts
    after = await scrape(client)
    route = {"model": "slow", "route": CHAT_URL}
    assert delta(before, after, REQUESTS, **route, status="200") == 1
    assert delta(before, after, PROMPT, model="slow") == prompt_tokens("hello")
    assert delta(before, after, COMPLETION, model="slow") == 6  # "olleh" + EOS
    # five chunks with text ("o", "l", "l", "e", "h"): one first token, four gaps, each >= one step
    assert delta(before, after, TTFT + "_count", **route) == 1
    assert delta(before, after, TTFT + "_sum", **route) >= STEP_S * 0.9
    assert delta(before, after, ITL + "_count", **route) == 4
    assert delta(before, after, ITL + "_bucket", **route, le="0.005") == 0
    assert delta(before, after, ITL + "_sum", **route) >= 4 * STEP_S * 0.9
    e2e = delta(before, after, DURATION + "_sum", **route)
    assert e2e >= delta(before, after, TTFT + "_sum", **route) + delta(before, after, ITL + "_sum", **route)


async def test_gaps_are_per_chunk_when_tokens_are_coalesced(client):
    before = await scrape(client)
    r = await client.post("/v1/completions", json={"model": "coalesced", "prompt": "abcd", "stream": True})
    assert r.status_code == 200 and "data: [DONE]" in r.text
    after = await scrape(client)
    route = {"model": "coalesced", "route": "/v1/completions"}
    assert delta(before, after, COMPLETION, model="coalesced") == 5  # "dcba" + EOS
    # the first token goes at once, the other four in one chunk at the end: one gap of 4 steps
    assert delta(before, after, TTFT + "_count", **route) == 1
    assert delta(before, after, ITL + "_count", **route) == 1
    assert delta(before, after, ITL + "_sum", **route) >= 4 * STEP_S * 0.9


async def test_stream_with_usage_asked_for_counts_once(client):
    before = await scrape(client)
    r = await client.post(CHAT_URL, json=chat("abc", stream=True, stream_options={"include_usage": True}))
    assert '"usage":{"prompt_tokens"' in r.text
    after = await scrape(client)
    assert delta(before, after, COMPLETION, model="fake-llm") == 4
    assert delta(before, after, PROMPT, model="fake-llm") == prompt_tokens("abc")


async def test_embeddings_count_prompt_tokens_only(client):
    before = await scrape(client)
    r = await client.post("/v1/embeddings", json={"model": "minilm", "input": ["king", "queen"]})
    assert r.status_code == 200
    after = await scrape(client)
    assert delta(before, after, REQUESTS, model="minilm", route="/v1/embeddings", status="200") == 1
    assert delta(before, after, PROMPT, model="minilm") == r.json()["usage"]["prompt_tokens"] == 6
    assert not after.has(COMPLETION, model="minilm")


async def test_errors_are_counted_by_status_without_tokens(client):
    before = await scrape(client)
    too_long = await client.post(CHAT_URL, json=chat("x" * 300))  # over the fake model's context
    unknown_model = await client.post(CHAT_URL, json=chat(model="no-such-model"))
    unknown_path = await client.get("/v1/secret-path-123")
    bad_stream = await client.post(CHAT_URL, json=chat("x" * 300, stream=True))
    assert (too_long.status_code, unknown_model.status_code, unknown_path.status_code, bad_stream.status_code) == (400, 404, 404, 400)
    after = await scrape(client)
    assert delta(before, after, REQUESTS, model="fake-llm", route=CHAT_URL, status="400") == 2
    assert delta(before, after, REQUESTS, model="", route=CHAT_URL, status="404") == 1  # unknown ids are no label
    assert delta(before, after, REQUESTS, model="", route="unmatched", status="404") == 1
    assert "secret-path-123" not in after.text and "no-such-model" not in after.text
    assert delta(before, after, PROMPT, model="fake-llm") == 0
    assert delta(before, after, TTFT + "_count", model="fake-llm", route=CHAT_URL) == 0


async def test_model_gauges_follow_load_and_readiness(client, routes):
    slow = routes[2]
    first = await scrape(client)
    assert first.get("model_server_model_state", model="slow", state="ready") == 1
    assert first.get("model_server_model_state", model="slow", state="loading") == 0
    assert first.get("model_server_requests_running", model="slow") == 0
    assert first.has("model_server_requests_waiting", model="minilm")  # the embedding batch queue
    assert not first.has("model_server_kv_cache_usage_ratio", model="slow")  # the fake engine has none

    body = chat("abc", model="slow", max_tokens=40, ignore_eos=True)  # ~0.8 s of generation
    request = asyncio.create_task(client.post(CHAT_URL, json=body))
    running = []
    for _ in range(100):
        running.append((await scrape(client)).get("model_server_requests_running", model="slow"))
        if running[-1] or request.done():
            break
        await asyncio.sleep(0.01)
    assert (await request).status_code == 200
    assert max(running) == 1
    assert (await scrape(client)).get("model_server_requests_running", model="slow") == 0

    try:
        slow.ready, slow.loading = False, True
        assert (await scrape(client)).get("model_server_model_state", model="slow", state="loading") == 1
        health = (await client.get("/health")).json()
        assert health["status"] == "degraded" and health["models"]["slow"] == {"status": "loading"}
        slow.loading = False
        assert (await scrape(client)).get("model_server_model_state", model="slow", state="unavailable") == 1
        assert (await client.get("/health")).json()["models"]["slow"] == {"status": "unavailable"}
    finally:
        slow.ready, slow.loading = True, True
    health = await client.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert health.json()["models"]["slow"]["status"] == "ready"


async def test_each_app_has_its_own_registry(routes, client):
    await client.post(CHAT_URL, json=chat("hi"))
    assert (await scrape(client)).get(REQUESTS, model="fake-llm", route=CHAT_URL, status="200") >= 1
    async with client_for(routes) as fresh:
        assert (await scrape(fresh)).get(REQUESTS, model="fake-llm", route=CHAT_URL, status="200") == 0


async def test_metrics_follow_the_api_key_rules(routes):
    keys = KeyStore(parse_key_file("sk-admin\nsk-embed minilm\n"))
    admin = {"Authorization": "Bearer sk-admin"}
    async with client_for(routes, keys) as c:
        assert (await c.get("/metrics")).status_code == 401
        limited = await c.get("/metrics", headers={"Authorization": "Bearer sk-embed"})
        assert limited.status_code == 403 and limited.json()["error"]["code"] == "metrics_not_allowed"
        assert (await c.post(CHAT_URL, json=chat())).status_code == 401
        s = await scrape(c, **admin)
        # answered before routing, still labelled with the route's template
        assert s.get(REQUESTS, model="", route=CHAT_URL, status="401") == 1
        assert s.get(REQUESTS, model="", route="/metrics", status="403") == 1
    async with client_for(routes, keys, public_paths=["/health", "/metrics"]) as c:
        assert (await c.get("/metrics")).status_code == 200


async def test_a_route_that_builds_its_own_answer_reports_usage_in_request_state(routes):
    app = create_app(Router(routes))

    @app.get("/custom")
    async def custom(request: Request) -> JSONResponse:
        request.state.model, request.state.usage = "fake-llm", {"prompt_tokens": 7, "completion_tokens": 3}
        return JSONResponse({"answer": "in another shape"})

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as c:
        assert (await c.get("/custom")).status_code == 200
        s = await scrape(c)
    assert s.get(REQUESTS, model="fake-llm", route="/custom", status="200") == 1
    assert (s.get(PROMPT, model="fake-llm"), s.get(COMPLETION, model="fake-llm")) == (7, 3)
