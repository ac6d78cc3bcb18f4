"""HTTP tests: the real FastAPI ingress over ASGI, with in-process model servers.

The LLM server runs on the small deterministic fake engine (it answers with the last user
message reversed), so these tests pin down protocol behaviour exactly; the embedding server is
the real one with the default MiniLM model. Ray is not involved (``tests/local.py``).
"""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from deployments.api import create_app
from deployments.routing import EMBEDDING, LLM, ModelRoute, Router
from tests.local import LocalHandle
from tests.spec import validate
from tests.vectors import assert_same_vectors

CHAT_URL = "/v1/chat/completions"


@pytest.fixture(scope="session")
async def client(servers):
    _, llm, embedder = servers
    router = Router(
        [
            ModelRoute("fake-llm", LLM, LocalHandle(llm), aliases=["fake"]),
            ModelRoute("minilm", EMBEDDING, LocalHandle(embedder)),
        ]
    )
    transport = httpx.ASGITransport(app=create_app(router))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


def chat(content="hello", **extra):
    return {"model": "fake-llm", "messages": [{"role": "user", "content": content}], **extra}


def sse_events(text: str) -> list:
    events = [line[len("data: "):] for line in text.split("\n\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and events.count("[DONE]") == 1
    return [json.loads(e) for e in events[:-1]]


async def test_chat_completion_shape_and_usage(client):
    r = await client.post(CHAT_URL, json=chat("hello"))
    assert r.status_code == 200, r.text
    body = r.json()
    validate(body, "CreateChatCompletionResponse")
    assert body["choices"][0]["message"]["content"] == "olleh"
    assert body["choices"][0]["finish_reason"] == "stop"
    prompt = len("user: hello\nassistant: ".encode())
    assert body["usage"] == {"prompt_tokens": prompt, "completion_tokens": 6, "total_tokens": prompt + 6}


async def test_alias_routes_to_the_model(client):
    r = await client.post(CHAT_URL, json={**chat("ab"), "model": "fake"})
    assert r.json()["choices"][0]["message"]["content"] == "ba"
    assert r.json()["model"] == "fake"


async def test_max_tokens_gives_length(client):
    r = await client.post(CHAT_URL, json=chat("abcdef", max_tokens=3))
    choice = r.json()["choices"][0]
    assert choice["message"]["content"] == "fed" and choice["finish_reason"] == "length"


async def test_stop_string_is_cut_and_reported(client):
    r = await client.post(CHAT_URL, json=chat("xyz-cba", stop=["-"]))
    choice = r.json()["choices"][0]
    assert choice["message"]["content"] == "abc" and choice["finish_reason"] == "stop"


async def test_n_choices(client):
    r = await client.post(CHAT_URL, json=chat("ab", n=3))
    choices = r.json()["choices"]
    assert [c["index"] for c in choices] == [0, 1, 2]
    assert all(c["message"]["content"] == "ba" for c in choices)
    assert r.json()["usage"]["completion_tokens"] == 9  # 3 x (2 letters + EOS)


async def test_stream_chunks_roles_usage_and_done(client):
    r = await client.post(
        CHAT_URL, json=chat("hello", stream=True, stream_options={"include_usage": True}, stop="e")
    )
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    for e in events:
        validate(e, "CreateChatCompletionStreamResponse")
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["delta"].get("content", "") for e in events for c in e["choices"])
    assert text == "oll"  # "olleh" cut before the stop string "e"
    finishes = [c["finish_reason"] for e in events for c in e["choices"] if c["finish_reason"]]
    assert finishes == ["stop"]
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] == 4
    assert len({e["id"] for e in events}) == 1


async def test_stream_error_before_start_is_a_real_4xx(client):
    r = await client.post(CHAT_URL, json=chat("x" * 300, stream=True))
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "context_length_exceeded"
    assert "256" in r.json()["error"]["message"]


async def test_completions_plain_echo_and_token_prompt(client):
    r = await client.post("/v1/completions", json={"model": "fake-llm", "prompt": "abc", "max_tokens": 5})
    validate(r.json(), "CreateCompletionResponse")
    assert r.json()["choices"][0]["text"] == "cba"
    r = await client.post("/v1/completions", json={"model": "fake-llm", "prompt": [[97, 98], [99]], "echo": True})
    texts = [c["text"] for c in r.json()["choices"]]
    assert texts == ["abba", "cc"]
    assert r.json()["usage"]["prompt_tokens"] == 3


async def test_completions_stream(client):
    r = await client.post("/v1/completions", json={"model": "fake-llm", "prompt": "abc", "stream": True})
    events = sse_events(r.text)
    assert "".join(c["text"] for e in events for c in e["choices"]) == "cba"
    assert events[-1]["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize(
    "payload, status, param",
    [
        (chat(temperature=3), 400, "temperature"),
        (chat(tools=[{"type": "function", "function": {"name": "f g"}}]), 400, "tools[0].function.name"),
        (chat(response_format={"type": "json_object"}), 400, "response_format"),
        (chat(unknown_field=1), 400, "unknown_field"),
        ({**chat(), "model": "missing-model"}, 404, "model"),
        ({**chat(), "model": "minilm"}, 400, "model"),
        (chat(logit_bias={"99999": 5}), 400, "logit_bias"),
        (chat(max_tokens=1000), 400, "messages"),
    ],
)
async def test_errors_are_openai_bodies(client, payload, status, param):
    r = await client.post(CHAT_URL, json=payload)
    assert r.status_code == status, r.text
    validate(r.json(), "ErrorResponse")
    assert r.json()["error"]["param"] == param
    assert "detail" not in r.json()


async def test_malformed_json_is_400(client):
    r = await client.post(CHAT_URL, content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = await client.post(CHAT_URL, content=b"[1, 2]", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


async def test_unknown_route_and_method(client):
    r = await client.get("/v1/nothing")
    assert r.status_code == 404 and "error" in r.json()
    r = await client.get(CHAT_URL)
    assert r.status_code == 405 and "error" in r.json()


async def test_models_list_and_retrieve(client):
    r = await client.get("/v1/models")
    validate(r.json(), "ListModelsResponse")
    cards = {m["id"]: m for m in r.json()["data"]}
    assert cards["fake-llm"]["engine"] == "fake" and cards["minilm"]["dimensions"] == 384
    r = await client.get("/v1/models/fake")
    assert r.status_code == 200 and r.json()["id"] == "fake-llm"
    validate(r.json(), "Model")
    assert (await client.get("/v1/models/nope")).status_code == 404


async def test_health(client):
    r = await client.get("/health")
    body = r.json()
    assert r.status_code == 200 and body["status"] == "ok"
    assert body["models"]["fake-llm"]["status"] == "ready" and body["models"]["fake-llm"]["running"] == 0
    assert body["models"]["minilm"] == {"status": "ready", "queued": 0}


async def test_health_reports_an_unhealthy_engine(servers, client):
    engine = servers[0]
    engine.healthy = False
    try:
        r = await client.get("/health")
        assert r.status_code == 503
        assert r.json()["models"]["fake-llm"]["status"] == "unavailable"
    finally:
        engine.healthy = True


class BackPressureError(Exception):
    """Named like Ray Serve's error for a full queue (module level: handles pickle errors)."""


async def test_health_says_busy_not_down_when_a_full_replica_cannot_answer_stats():
    """Serve refusing the stats call (queue full) means loaded, not broken: no 503 for probes."""

    class Full:
        async def stats(self):
            raise BackPressureError("queue full")

    class Died:
        async def stats(self):
            raise RuntimeError("replica died")

    for target, status, model_state in ((Full(), 200, {"status": "ready", "busy": True}), (Died(), 503, None)):
        app = create_app(Router([ModelRoute("m", LLM, LocalHandle(target))]))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as c:
            r = await c.get("/health")
        assert r.status_code == status
        if model_state:
            assert r.json()["models"]["m"] == model_state
        else:
            assert r.json()["models"]["m"]["status"] == "unavailable"


async def test_embeddings_float_and_base64_agree(client):
    import base64

    import numpy as np

    floats = (await client.post("/v1/embeddings", json={"model": "minilm", "input": ["king", "queen"]})).json()
    validate(floats, "CreateEmbeddingResponse")
    b64 = (await client.post("/v1/embeddings", json={"model": "minilm", "input": ["king", "queen"], "encoding_format": "base64"})).json()
    for f, b in zip(floats["data"], b64["data"]):
        decoded = np.frombuffer(base64.b64decode(b["embedding"]), dtype="<f4")
        assert np.allclose(decoded, f["embedding"], atol=1e-6)
    assert floats["usage"]["prompt_tokens"] == 6  # [CLS] word [SEP] twice


async def test_embedding_errors(client):
    r = await client.post("/v1/embeddings", json={"model": "minilm", "input": "word " * 300})
    assert r.status_code == 400 and r.json()["error"]["param"] == "input" and "256" in r.json()["error"]["message"]
    r = await client.post("/v1/embeddings", json={"model": "minilm", "input": "x", "dimensions": 8})
    assert r.status_code == 400 and r.json()["error"]["param"] == "dimensions"
    r = await client.post("/v1/embeddings", json={"model": "fake-llm", "input": "x"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"


async def test_concurrent_embedding_requests_are_answered_in_order(client):
    words = [f"sentence number {i}" for i in range(20)]
    single = await asyncio.gather(*(client.post("/v1/embeddings", json={"model": "minilm", "input": w}) for w in words))
    together = (await client.post("/v1/embeddings", json={"model": "minilm", "input": words})).json()
    import numpy as np

    dtype = (await client.get("/v1/models/minilm")).json()["dtype"]
    for r, item in zip(single, together["data"]):
        assert_same_vectors(r.json()["data"][0]["embedding"], item["embedding"], dtype)


async def test_closing_a_stream_aborts_the_generation(servers):
    """What a client disconnect does to the server: the stream is closed, the engine aborts.

    (httpx's ASGI transport cannot disconnect mid-stream; the graph tests do it over HTTP.)
    """
    from deployments.protocol import ChatCompletionRequest

    engine, llm, _ = servers
    aborted_before = len(engine.aborted)
    req = ChatCompletionRequest.model_validate(chat("abc", stream=True, max_tokens=200, ignore_eos=True))
    stream = llm.chat_stream(req)
    received = [await stream.__anext__() for _ in range(3)]
    assert engine.running, "the generation should be running while the stream is open"
    await stream.aclose()
    assert len(engine.aborted) == aborted_before + 1
    assert not engine.running
    assert "[DONE]" not in "".join(received)


async def test_lora_adapter_ids_route_to_the_base_model_with_the_adapter(tmp_path):
    """`<model>:<adapter>` and the adapter's own name reach the base deployment with the adapter."""
    from deployments.config import LLMConfig
    from deployments.engines.fake import FakeEngine
    from deployments.llm_server import LLMServer
    from tests.local import construct

    config = LLMConfig(id="base", source="unused", lora_adapters=[{"name": "caps", "source": str(tmp_path)}])
    server = await construct(LLMServer, config, FakeEngine())
    router = Router([ModelRoute("base", LLM, LocalHandle(server), aliases=[n for n in config.names if n != "base"])])
    transport = httpx.ASGITransport(app=create_app(router))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        answers = {}
        for model in ("base", "base:caps", "caps"):
            r = await c.post(CHAT_URL, json={**chat("abc"), "model": model})
            assert r.status_code == 200, r.text
            answers[model] = r.json()["choices"][0]["message"]["content"]
        assert answers == {"base": "cba", "base:caps": "CBA", "caps": "CBA"}
        listed = (await c.get("/v1/models")).json()["data"]
        assert [m["id"] for m in listed] == ["base", "base:caps"]
        assert listed[1]["parent"] == "base"
        assert (await c.get("/v1/models/caps")).json()["id"] == "base:caps"
        assert (await c.post(CHAT_URL, json={**chat("abc"), "model": "base:nope"})).status_code == 404
