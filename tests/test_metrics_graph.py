"""Whole-graph metrics: ``/metrics`` of the real app (``serve_config.yaml``, real default models)
after a chat stream and an embedding request, parsed with Prometheus' own parser."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import openai_clients

pytestmark = pytest.mark.graph

CHAT_MODEL = "smollm2-135m-instruct"
EMBED_MODEL = "all-minilm-l6-v2"
CHAT = {"model": CHAT_MODEL, "route": "/v1/chat/completions"}


def scrape(graph) -> dict[tuple[str, frozenset], float]:
    r = httpx.get(graph.base_url + "/metrics", timeout=30)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {(s.name, frozenset(s.labels.items())): s.value for f in text_string_to_metric_families(r.text) for s in f.samples}


def value(samples, name: str, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_metrics_after_a_chat_stream_and_an_embedding_request(graph):
    client = openai_clients(graph)[0]
    before = scrape(graph)
    chunks = list(
        client.chat.completions.create(
            model=CHAT_MODEL,
            messages=[{"role": "user", "content": "Count from one to twenty."}],
            temperature=0,
            max_tokens=32,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
    )
    usage = chunks[-1].usage
    assert usage.completion_tokens == 32
    embedding = client.embeddings.create(model=EMBED_MODEL, input=["king", "queen"])
    after = scrape(graph)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("model_server_requests_total", **CHAT, status="200") == 1
    assert delta("model_server_requests_total", model=EMBED_MODEL, route="/v1/embeddings", status="200") == 1
    assert delta("model_server_prompt_tokens_total", model=CHAT_MODEL) == usage.prompt_tokens > 10
    assert delta("model_server_completion_tokens_total", model=CHAT_MODEL) == 32
    assert delta("model_server_prompt_tokens_total", model=EMBED_MODEL) == embedding.usage.prompt_tokens == 6

    e2e = delta("model_server_request_duration_seconds_sum", **CHAT)
    ttft = delta("model_server_time_to_first_token_seconds_sum", **CHAT)
    gaps = delta("model_server_inter_token_latency_seconds_sum", **CHAT)
    assert delta("model_server_time_to_first_token_seconds_count", **CHAT) == 1
    # 32 tokens arrive in chunks (stream_interval_ms), at least two of them with text
    assert 1 <= delta("model_server_inter_token_latency_seconds_count", **CHAT) < 32
    assert 0 < ttft < e2e and 0 < gaps < e2e and ttft + gaps <= e2e + 1e-6
    assert delta("model_server_request_duration_seconds_count", model=EMBED_MODEL, route="/v1/embeddings") == 1

    for model in (CHAT_MODEL, EMBED_MODEL):
        assert value(after, "model_server_model_state", model=model, state="ready") == 1
        assert value(after, "model_server_model_state", model=model, state="loading") == 0
    assert ("model_server_requests_running", frozenset({"model": CHAT_MODEL}.items())) in after
    assert ("model_server_requests_waiting", frozenset({"model": EMBED_MODEL}.items())) in after
    engine = client.models.retrieve(CHAT_MODEL).model_extra["engine"]
    kv = after.get(("model_server_kv_cache_usage_ratio", frozenset({"model": CHAT_MODEL}.items())))
    if engine == "vllm":  # vLLM reports its KV-cache use; the transformers engine has no such number
        assert kv is not None and 0 <= kv <= 1
    else:
        assert kv is None


def test_health_and_logs_show_loading_progress(graph):
    health = httpx.get(graph.base_url + "/health", timeout=30).json()
    assert health["status"] == "ok"
    assert {m: s["status"] for m, s in health["models"].items()} == {CHAT_MODEL: "ready", EMBED_MODEL: "ready", "whisper-tiny-en": "ready"}
    log = graph.log_path.read_text(errors="replace")
    assert f"Model {CHAT_MODEL}: loading " in log and f"Embedding model {EMBED_MODEL}: loading " in log
    assert " MB)" in log  # sizes on disk
    assert f"Model {CHAT_MODEL} ready on engine" in log and f"Model {CHAT_MODEL} is ready" in log
