"""``/v1/moderations`` is not served: the official client gets a 404 it raises at once, with a
message that says why (the ASGI app, no Ray)."""

from __future__ import annotations

import httpx2
import openai
import pytest

from deployments.api import create_app
from deployments.routing import Router
from deployments.auth import KeyStore


def _client(app) -> openai.AsyncOpenAI:
    transport = httpx2.ASGITransport(app=app)
    return openai.AsyncOpenAI(
        base_url="http://test/v1", api_key="unused", max_retries=2,
        http_client=httpx2.AsyncClient(transport=transport, base_url="http://test"),
    )


async def test_moderations_is_a_clear_not_found_the_client_raises():
    app = create_app(Router([]))
    calls = 0

    async def count(scope, receive, send):  # counts requests, to show there is no retry
        nonlocal calls
        calls += scope["type"] == "http"
        await app(scope, receive, send)

    client = _client(count)
    with pytest.raises(openai.NotFoundError) as e:
        await client.moderations.create(input="I want to hurt someone.")
    assert e.value.status_code == 404
    assert e.value.body["code"] == "moderations_not_served" and e.value.body["type"] == "invalid_request_error"
    assert "no moderation model" in e.value.message
    assert calls == 1, "a 404 is not retried (a 5xx would be, twice)"


async def test_moderations_needs_a_key_like_every_route():
    app = create_app(Router([]), KeyStore.from_env({"API_KEYS": "sk-mod"}))
    async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://test") as http:
        anonymous = await http.post("/v1/moderations", json={"input": "x"})
        keyed = await http.post("/v1/moderations", json={"input": "x"}, headers={"Authorization": "Bearer sk-mod"})
    assert anonymous.status_code == 401 and anonymous.json()["error"]["type"] == "authentication_error"
    assert keyed.status_code == 404 and keyed.json()["error"]["code"] == "moderations_not_served"


def test_moderations_is_not_in_the_openapi_document():
    assert "/v1/moderations" not in create_app(Router([])).openapi()["paths"]
