"""``serve run configs/multi-model.yaml``: two chat ids and two embedding ids, each its own
deployment, routed by `model` (ids and aliases), with the openai client."""

from __future__ import annotations

import tempfile
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest

from tests.conftest import openai_clients, start_app

pytestmark = pytest.mark.graph


@pytest.fixture(scope="module")
def multi():
    app = start_app("configs/multi-model.yaml", Path(tempfile.mkdtemp(prefix="multi-")))
    yield app
    app.stop()


@pytest.fixture(scope="module")
def client(multi):
    return openai_clients(multi)[0]


def test_every_model_is_listed_with_its_capabilities(client):
    cards = {m.id: m.model_extra for m in client.models.list().data}
    assert set(cards) == {"smollm2-vllm", "smollm2-hf", "all-minilm-l6-v2", "all-minilm-l6-v2-128"}
    assert cards["smollm2-vllm"]["engine"] == "vllm" and cards["smollm2-hf"]["engine"] == "hf"
    assert cards["smollm2-vllm"]["aliases"] == ["smollm2"]
    assert cards["all-minilm-l6-v2"]["capabilities"] == ["embeddings"] and cards["all-minilm-l6-v2"]["dimensions"] == 384
    assert cards["all-minilm-l6-v2-128"]["dimensions"] == 128
    assert all(c["context_length"] for c in cards.values())


@pytest.mark.parametrize("model, served", [("smollm2-vllm", "smollm2-vllm"), ("smollm2", "smollm2"), ("smollm2-hf", "smollm2-hf")])
def test_chat_ids_route_to_their_own_deployment(client, model, served):
    reply = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "What is the capital of France?"}], temperature=0
    )
    assert reply.model == served and "Paris" in reply.choices[0].message.content


def test_embedding_ids_full_and_reduced(client, multi):
    full = client.embeddings.create(model="all-minilm-l6-v2", input=["king", "queen"])
    small = client.embeddings.create(model="all-minilm-l6-v2-128", input=["king", "queen"])
    assert full.model == "all-minilm-l6-v2" and small.model == "all-minilm-l6-v2-128"
    f, s = np.array([d.embedding for d in full.data]), np.array([d.embedding for d in small.data])
    assert f.shape == (2, 384) and s.shape == (2, 128)
    assert np.allclose(np.linalg.norm(s, axis=1), 1.0, atol=1e-5)
    assert np.allclose(s, f[:, :128] / np.linalg.norm(f[:, :128], axis=1, keepdims=True), atol=1e-5)
    # the reduced id also takes `dimensions` per request; the full one refuses to change
    r = httpx.post(multi.base_url + "/v1/embeddings", json={"model": "all-minilm-l6-v2-128", "input": "x", "dimensions": 64}, timeout=60)
    assert r.status_code == 200 and len(r.json()["data"][0]["embedding"]) == 64
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model="all-minilm-l6-v2", input="x", dimensions=64)
    assert e.value.body["param"] == "dimensions"


def test_wrong_capability_is_a_400_that_says_so(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="all-minilm-l6-v2", messages=[{"role": "user", "content": "hi"}])
    assert "embedding model" in e.value.message and e.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model="smollm2-hf", input="hi")
    assert "chat" in e.value.message
