"""API keys, per-key model access, CORS, request limits and readiness, over ASGI.

The app is the real FastAPI ingress with the fake-engine LLM server and the real MiniLM
embedding server in-process (as in tests/test_api.py)."""

from __future__ import annotations

import httpx
import pytest

from deployments.api import create_app
from deployments.routing import EMBEDDING, LLM, ModelRoute, Router
from deployments.auth import KeyStore, parse_key_file
from deployments.config import ServerConfig
from tests.local import LocalHandle

KEYS = KeyStore.from_env(
    {"API_KEYS": "sk-admin", "API_KEYS_FILE": ""}
)
KEYS.keys += parse_key_file("sk-embed minilm\n# comment\nsk-chat fake-llm,other\n")

CHAT = {"model": "fake-llm", "messages": [{"role": "user", "content": "hi"}]}
EMBED = {"model": "minilm", "input": "hi"}
ROUTES = [
    ("GET", "/v1/models", None),
    ("GET", "/v1/models/fake-llm", None),
    ("POST", "/v1/chat/completions", CHAT),
    ("POST", "/v1/completions", {"model": "fake-llm", "prompt": "hi"}),
    ("POST", "/v1/embeddings", EMBED),
    ("GET", "/docs", None),
    ("GET", "/openapi.json", None),
]


@pytest.fixture(scope="module")
async def routes(servers):
    _, llm, embedder = servers
    return [ModelRoute("fake-llm", LLM, LocalHandle(llm)), ModelRoute("minilm", EMBEDDING, LocalHandle(embedder))]


def client_for(routes, keys=KEYS, **server) -> httpx.AsyncClient:
    app = create_app(Router(routes), keys, ServerConfig(**{"retry_after_s": 3, **server}))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.parametrize("method, path, body", ROUTES)
async def test_every_route_needs_a_valid_key(routes, method, path, body):
    async with client_for(routes) as c:
        missing = await c.request(method, path, json=body)
        wrong = await c.request(method, path, json=body, headers=auth("sk-nope"))
        right = await c.request(method, path, json=body, headers=auth("sk-admin"))
    for r in (missing, wrong):
        assert r.status_code == 401
        assert r.json()["error"]["type"] == "authentication_error"
        assert "sk-nope" not in r.text
    assert "Missing API key" in missing.json()["error"]["message"]
    assert right.status_code == 200, right.text


async def test_keys_limited_to_models(routes):
    async with client_for(routes) as c:
        denied = await c.post("/v1/chat/completions", json=CHAT, headers=auth("sk-embed"))
        assert denied.status_code == 403 and denied.json()["error"]["param"] == "model"
        assert (await c.post("/v1/embeddings", json=EMBED, headers=auth("sk-embed"))).status_code == 200
        assert (await c.post("/v1/embeddings", json=EMBED, headers=auth("sk-chat"))).status_code == 403
        assert (await c.get("/v1/models/fake-llm", headers=auth("sk-embed"))).status_code == 403
        listed = (await c.get("/v1/models", headers=auth("sk-embed"))).json()["data"]
        assert [m["id"] for m in listed] == ["minilm"]


async def test_public_paths_and_open_mode(routes):
    async with client_for(routes) as c:
        assert (await c.get("/health")).status_code == 200
    async with client_for(routes, keys=KeyStore([])) as c:
        assert (await c.post("/v1/chat/completions", json=CHAT)).status_code == 200
    async with client_for(routes, public_paths=["/health", "/v1/models"]) as c:
        assert (await c.get("/v1/models")).status_code == 200
        assert (await c.get("/v1/models/fake-llm")).status_code == 401


def test_key_file_format():
    keys = parse_key_file("a\n b  m1,m2 # two models\n\n# only a comment\nc m3 m4\n")
    assert [(k.secret, k.models) for k in keys] == [
        (b"a", None), (b"b", frozenset({"m1", "m2"})), (b"c", frozenset({"m3", "m4"}))
    ]


async def test_cors_is_off_by_default_and_configurable(routes):
    preflight = {"Origin": "http://app.local", "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,content-type"}
    async with client_for(routes) as c:
        r = await c.options("/v1/chat/completions", headers=preflight)
        assert "access-control-allow-origin" not in r.headers
    async with client_for(routes, cors_allow_origins=["http://app.local"]) as c:
        r = await c.options("/v1/chat/completions", headers=preflight)
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://app.local"
        r = await c.post("/v1/chat/completions", json=CHAT, headers={"Origin": "http://app.local", **auth("sk-admin")})
        assert r.headers["access-control-allow-origin"] == "http://app.local"
        r = await c.options("/v1/chat/completions", headers={**preflight, "Origin": "http://evil.local"})
        assert r.headers.get("access-control-allow-origin") != "http://evil.local"


async def test_request_limits_are_400s_naming_the_limit(routes):
    open_keys = KeyStore([])
    async with client_for(routes, keys=open_keys, max_body_bytes=2048, max_tokens_limit=50) as c:
        big = {**CHAT, "messages": [{"role": "user", "content": "x" * 5000}]}
        r = await c.post("/v1/chat/completions", json=big)
        assert r.status_code == 400 and "2048 bytes" in r.json()["error"]["message"]
        r = await c.post("/v1/chat/completions", json={**CHAT, "max_tokens": 51})
        assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens" and "50" in r.json()["error"]["message"]
        r = await c.post("/v1/completions", json={"model": "fake-llm", "prompt": "x", "max_tokens": 500})
        assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"
        r = await c.post("/v1/chat/completions", json={**CHAT, "n": 17})
        assert r.status_code == 400 and r.json()["error"]["param"] == "n" and "16" in r.json()["error"]["message"]
        r = await c.post("/v1/chat/completions", json={**CHAT, "stop": ["a", "b", "c", "d", "e"]})
        assert r.status_code == 400 and r.json()["error"]["param"] == "stop" and "4" in r.json()["error"]["message"]
    async with client_for(routes, keys=open_keys) as c:
        r = await c.post("/v1/embeddings", json={"model": "minilm", "input": ["a"] * 2049})
        assert r.status_code == 400 and r.json()["error"]["param"] == "input" and "2048" in r.json()["error"]["message"]


async def test_a_model_without_a_running_replica_is_503_with_retry_after(routes):
    async with client_for(routes, keys=KeyStore([])) as c:
        routes[0].ready = False
        try:
            r = await c.post("/v1/chat/completions", json=CHAT)
            assert r.status_code == 503 and r.headers["retry-after"] == "3"
            assert "loading" in r.json()["error"]["message"]
            h = await c.get("/health")
            assert h.status_code == 503 and h.json()["models"]["fake-llm"]["status"] != "ready"
        finally:
            routes[0].ready = True
        assert (await c.post("/v1/chat/completions", json=CHAT)).status_code == 200


async def test_backpressure_becomes_429_with_retry_after(routes):
    class BackPressureError(Exception):
        """Stands for ray.serve.exceptions.BackPressureError, matched by name in the ingress."""

    class Full:
        def options(self, **_):
            return self

        def __getattr__(self, name):
            return self

        def remote(self, *args):
            raise BackPressureError("queue full")

    full = ModelRoute("fake-llm", LLM, Full())
    async with client_for([full], keys=KeyStore([])) as c:
        r = await c.post("/v1/chat/completions", json=CHAT)
        assert r.status_code == 429 and r.headers["retry-after"] == "3"
        assert r.json()["error"]["type"] == "rate_limit_error"
        r = await c.post("/v1/chat/completions", json={**CHAT, "stream": True})
        assert r.status_code == 429
