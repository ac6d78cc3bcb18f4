"""The Batch API over the in-process app (fake LLM engine, real MiniLM), with the official client.

Files and batches go through the real routes and the real service (SQLite store, fsspec storage,
runner) in a temporary folder; lines run through ``execute_lines``, the online route's checks and
the model servers' handles. A restart is a service closed mid-batch and a new one opened on the
same folder.
"""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections import Counter

import httpx
import openai
import pytest

from deployments.api import create_app
from deployments.routing import EMBEDDING, LLM, ModelRoute, Router
from deployments.auth import Key, KeyStore
from deployments.batch.execute import execute_lines
from deployments.batch.service import BatchService
from deployments.batch.store import Store
from deployments.config import BatchConfig, LLMConfig, ServerConfig
from deployments.engines.fake import FakeEngine
from deployments.llm_server import LLMServer
from tests.local import LocalHandle, construct
from tests.spec import validate

KEY_A, KEY_B = "sk-batch-a", "sk-batch-b"
TERMINAL = {"completed", "failed", "cancelled", "expired"}
RESPONSE_SCHEMA = {
    "/v1/chat/completions": "CreateChatCompletionResponse",
    "/v1/completions": "CreateCompletionResponse",
    "/v1/embeddings": "CreateEmbeddingResponse",
}


class App:
    """The front (routes + service) over a router; ``clients[key]`` are official async clients."""

    def __init__(self, router: Router, config: BatchConfig, calls: Counter | None = None) -> None:
        self.router, self.config = router, config
        self.calls = calls if calls is not None else Counter()
        self.requests = 0  # calls of execute (a chat line, or a group of embedding lines, each)
        server = ServerConfig()

        async def execute(endpoint, bodies, models):
            self.requests += 1
            for body in bodies:
                if isinstance(body, dict):
                    self.calls[json.dumps(body, sort_keys=True)] += 1
            answers = await execute_lines(router, server, endpoint, bodies, models)
            self.service.online_seen(self.asgi.state.serving.online.last)  # as the driver does with the front's answer
            return answers

        self.service = BatchService(config, execute)
        keys = KeyStore([Key(KEY_A.encode(), None), Key(KEY_B.encode(), None)])
        self.asgi = create_app(router, keys, server, batch=self.service)
        self.asgi.state.serving.online.notify = self.service.online_seen  # as the front tells the driver
        self.http = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.asgi), base_url="http://test")
        self.clients = {
            key: openai.AsyncOpenAI(base_url="http://test/v1", api_key=key, max_retries=0, http_client=httpx.AsyncClient(
                transport=httpx.ASGITransport(app=self.asgi), base_url="http://test"))
            for key in (KEY_A, KEY_B)
        }

    async def close(self) -> None:
        await self.service.close()


@pytest.fixture(scope="session")
async def slow_llm():
    engine = FakeEngine(step_delay=0.02, max_model_len=256)
    return await construct(LLMServer, LLMConfig(id="slow-llm", source="unused", stream_interval_ms=0), engine)


@pytest.fixture
async def app(servers, slow_llm, tmp_path):
    _, llm, embedder = servers
    router = Router([
        ModelRoute("fake-llm", LLM, LocalHandle(llm)), ModelRoute("minilm", EMBEDDING, LocalHandle(embedder)),
        ModelRoute("slow-llm", LLM, LocalHandle(slow_llm)),
    ])
    config = BatchConfig(storage=str(tmp_path / "files"), db_path=str(tmp_path / "batch.db"), concurrency=4, progress_log_s=0.2)
    a = App(router, config)
    yield a
    await a.close()


def jsonl(items) -> bytes:
    return b"".join((i if isinstance(i, bytes) else json.dumps(i).encode()) + b"\n" for i in items)


def line(custom_id, url, body):
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": body}


async def wait_done(client, batch_id, timeout=60.0, statuses=TERMINAL):
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        batch = await client.batches.retrieve(batch_id)
        if not seen or seen[-1] != batch.status:
            seen.append(batch.status)
        if batch.status in statuses:
            return batch, seen
        await asyncio.sleep(0.02)
    raise TimeoutError(f"batch {batch_id} still {seen[-1]} after {timeout} s (statuses seen: {seen})")


async def upload(client, data: bytes, name="in.jsonl"):
    return await client.files.create(file=(name, io.BytesIO(data)), purpose="batch")


def output_lines(text: str) -> list[dict]:
    lines = [json.loads(l) for l in text.splitlines() if l]
    for item in lines:  # OpenAI's batch output line format
        assert set(item) == {"id", "custom_id", "response", "error"}, item
        assert item["id"].startswith("batch_req_")
    return lines


async def test_chat_batch_output_and_error_file_match_the_online_api(app):
    client = app.clients[KEY_A]
    url = "/v1/chat/completions"
    good = [line(f"ok-{i}", url, {"model": "fake-llm", "messages": [{"role": "user", "content": f"abc{i}"}]}) for i in range(5)]
    unknown = line("unknown-model", url, {"model": "nope", "messages": [{"role": "user", "content": "x"}]})
    bad_param = line("bad-param", url, {"model": "fake-llm", "messages": [{"role": "user", "content": "x"}], "temperature": 9})
    data = jsonl([good[0], good[1], b"{not json", unknown, good[2], bad_param, good[3], good[4]])
    f = await upload(client, data)
    validate(f.model_dump(exclude_unset=True), "OpenAIFile")
    assert f.purpose == "batch" and f.bytes == len(data)
    validate((await app.http.get("/v1/files", headers={"Authorization": f"Bearer {KEY_A}"})).json(), "ListFilesResponse")

    batch = await client.batches.create(input_file_id=f.id, endpoint=url, completion_window="24h", metadata={"job": "t"})
    validate(batch.model_dump(exclude_unset=True), "Batch")
    assert batch.status == "validating" and batch.metadata == {"job": "t"}
    batch, seen = await wait_done(client, batch.id)
    assert batch.status == "completed", (batch, seen)
    assert seen[-1] == "completed" and set(seen) <= {"validating", "in_progress", "finalizing", "completed"}
    validate(batch.model_dump(exclude_unset=True), "Batch")
    assert batch.request_counts.model_dump() == {"total": 8, "completed": 5, "failed": 3}
    assert batch.in_progress_at and batch.finalizing_at and batch.completed_at and batch.model == "fake-llm"

    out = output_lines((await client.files.content(batch.output_file_id)).text)
    assert sorted(o["custom_id"] for o in out) == [f"ok-{i}" for i in range(5)]
    for o in out:
        assert o["response"]["status_code"] == 200 and o["error"] is None
        validate(o["response"]["body"], "CreateChatCompletionResponse")
    assert out[0]["response"]["body"]["choices"][0]["message"]["content"] == "0cba"

    errors = {e["custom_id"]: e for e in output_lines((await client.files.content(batch.error_file_id)).text)}
    assert set(errors) == {None, "unknown-model", "bad-param"}
    assert errors[None]["response"]["body"]["error"]["code"] == "invalid_json"
    for custom_id, source in (("unknown-model", unknown), ("bad-param", bad_param)):
        online = await app.http.post(url, json=source["body"], headers={"Authorization": f"Bearer {KEY_A}"})
        assert errors[custom_id]["response"] == {**errors[custom_id]["response"], "status_code": online.status_code, "body": online.json()}
        validate(online.json(), "ErrorResponse")
    assert errors["unknown-model"]["response"]["status_code"] == 404
    assert errors["bad-param"]["response"]["status_code"] == 400


async def test_completion_and_embedding_batches(app):
    client = app.clients[KEY_A]
    for url, body, check in (
        ("/v1/completions", lambda i: {"model": "fake-llm", "prompt": f"xy{i}", "max_tokens": 8},
         lambda b, i: b["choices"][0]["text"] == f"{i}yx"),
        ("/v1/embeddings", lambda i: {"model": "minilm", "input": [f"sentence {i}", "another"]},
         lambda b, i: len(b["data"]) == 2 and len(b["data"][0]["embedding"]) == 384),
    ):
        f = await upload(client, jsonl(line(f"r{i}", url, body(i)) for i in range(6)))
        batch, _ = await wait_done(client, (await client.batches.create(input_file_id=f.id, endpoint=url, completion_window="24h")).id)
        assert batch.status == "completed" and batch.request_counts.completed == 6 and batch.error_file_id is None
        out = output_lines((await client.files.content(batch.output_file_id)).text)
        assert Counter(o["custom_id"] for o in out) == Counter(f"r{i}" for i in range(6))
        for o in out:
            validate(o["response"]["body"], RESPONSE_SCHEMA[url])
            assert check(o["response"]["body"], int(o["custom_id"][1:]))


async def test_embedding_lines_run_in_groups_each_answered_as_online(app, tmp_path):
    """Embedding lines go to the model in groups (``embedding_lines_per_request``), one request
    each; every line's body is the one the online route gives it alone (its own usage and model
    name), and a line the model refuses is an error line without failing its group."""
    grouped = App(app.router, BatchConfig(storage=str(tmp_path / "g-files"), db_path=str(tmp_path / "g.db"),
                                          concurrency=2, embedding_lines_per_request=8))
    try:
        client = grouped.clients[KEY_A]
        bodies = {f"e{i}": {"model": "minilm", "input": f"sentence number {i} " + "word " * (i % 7)} for i in range(19)}
        bodies["e5"] = {"model": "minilm", "input": "long " * 600}  # over the model's 256 tokens
        bodies["e9"] = {"model": "minilm", "input": ["two", "inputs"], "encoding_format": "base64"}
        f = await upload(client, jsonl(line(cid, "/v1/embeddings", b) for cid, b in bodies.items()))
        batch, _ = await wait_done(client, (await client.batches.create(input_file_id=f.id, endpoint="/v1/embeddings", completion_window="24h")).id)
        assert batch.status == "completed" and batch.request_counts.completed == 18 and batch.request_counts.failed == 1
        assert grouped.requests == 3  # 19 lines in groups of 8
        out = {o["custom_id"]: o["response"]["body"] for o in output_lines((await client.files.content(batch.output_file_id)).text)}
        assert set(out) == set(bodies) - {"e5"}
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=grouped.asgi), base_url="http://test")
        for cid in ("e0", "e6", "e9", "e18"):
            online = (await http.post("/v1/embeddings", json=bodies[cid], headers={"Authorization": f"Bearer {KEY_A}"})).json()
            if cid != "e9":  # the spec's schema has float vectors only, not base64 strings
                validate(out[cid], "CreateEmbeddingResponse")
            assert out[cid]["usage"] == online["usage"] and out[cid]["model"] == online["model"]
            assert len(out[cid]["data"]) == len(online["data"])
        (error,) = output_lines((await client.files.content(batch.error_file_id)).text)
        online = await http.post("/v1/embeddings", json=bodies["e5"], headers={"Authorization": f"Bearer {KEY_A}"})
        assert error["custom_id"] == "e5" and error["response"]["status_code"] == online.status_code == 400
        assert error["response"]["body"] == online.json()
    finally:
        await grouped.close()


async def test_a_line_for_another_endpoint_or_model_kind_is_an_error_line(app):
    client = app.clients[KEY_A]
    url = "/v1/embeddings"
    data = jsonl([line("a", url, {"model": "fake-llm", "input": "x"}), line("b", "/v1/completions", {"model": "minilm", "input": "x"})])
    f = await upload(client, data)
    batch, _ = await wait_done(client, (await client.batches.create(input_file_id=f.id, endpoint=url, completion_window="24h")).id)
    errors = {e["custom_id"]: e["response"] for e in output_lines((await client.files.content(batch.error_file_id)).text)}
    assert errors["a"]["status_code"] == 400 and errors["a"]["body"]["error"]["code"] == "model_not_supported"
    assert errors["b"]["body"]["error"]["param"] == "url"


async def test_duplicate_custom_ids_fail_the_batch(app):
    client = app.clients[KEY_A]
    url = "/v1/completions"
    f = await upload(client, jsonl([line("same", url, {"model": "fake-llm", "prompt": "a"})] * 2))
    batch, _ = await wait_done(client, (await client.batches.create(input_file_id=f.id, endpoint=url, completion_window="24h")).id)
    assert batch.status == "failed" and batch.failed_at
    assert batch.errors.data[0].code == "duplicate_custom_id" and batch.errors.data[0].line == 2
    validate(batch.model_dump(exclude_unset=True), "Batch")


def slow_lines(n, url="/v1/chat/completions"):
    return jsonl(line(f"s{i}", url, {"model": "slow-llm", "messages": [{"role": "user", "content": f"line number {i:04d}"}]}) for i in range(n))


async def wait_results(service, batch_id, at_least, timeout=30.0):
    deadline = time.monotonic() + timeout
    while sum(service.store.counts(batch_id)[:2]) < at_least:
        assert time.monotonic() < deadline, "no results recorded in time"
        await asyncio.sleep(0.01)


async def test_cancel_keeps_partial_output(app):
    client = app.clients[KEY_A]
    f = await upload(client, slow_lines(40))
    batch = await client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    await wait_results(app.service, batch.id, 2)
    cancelling = await client.batches.cancel(batch.id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at
    batch, seen = await wait_done(client, batch.id)
    assert batch.status == "cancelled" and batch.cancelled_at, seen
    out = output_lines((await client.files.content(batch.output_file_id)).text)
    assert 2 <= len(out) < 40 and len(out) == batch.request_counts.completed
    assert len({o["custom_id"] for o in out}) == len(out)
    done = await client.batches.create(
        input_file_id=(await upload(client, jsonl([line("x", "/v1/completions", {"model": "fake-llm", "prompt": "a"})]))).id,
        endpoint="/v1/completions", completion_window="24h")
    assert (await wait_done(client, done.id))[0].status == "completed"
    with pytest.raises(openai.BadRequestError):  # a finished batch cannot be cancelled
        await client.batches.cancel(done.id)


async def test_restart_mid_batch_resumes_with_each_line_exactly_once(app, tmp_path):
    client = app.clients[KEY_A]
    n = 24
    f = await upload(client, slow_lines(n))
    batch = await client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    await wait_results(app.service, batch.id, 5)
    await app.service.runner.stop()  # the driver dies: lines in flight are lost, unrecorded
    before = app.service.store.done_lines(batch.id)
    assert 5 <= len(before) < n
    ran_before = Counter(app.calls)
    app.service.store.close()

    again = App(app.router, app.config)  # a new front and driver on the same folder
    try:
        resumed = await again.service.start()
        assert resumed == [batch.id]
        done, seen = await wait_done(again.clients[KEY_A], batch.id)
        assert done.status == "completed", seen
        assert done.request_counts.model_dump() == {"total": n, "completed": n, "failed": 0}
        out = output_lines((await again.clients[KEY_A].files.content(done.output_file_id)).text)
        assert Counter(o["custom_id"] for o in out) == Counter(f"s{i}" for i in range(n))  # each exactly once
        # a line recorded before the restart was not run again
        recorded_bodies = {json.dumps({"model": "slow-llm", "messages": [{"role": "user", "content": f"line number {i:04d}"}]}, sort_keys=True) for i in before}
        assert not recorded_bodies & set(again.calls), "a recorded line ran again after the restart"
        assert sum(again.calls.values()) <= n - len(before) + app.config.concurrency
        assert ran_before  # the first driver did run lines
    finally:
        await again.close()


async def test_key_isolation(app):
    a, b = app.clients[KEY_A], app.clients[KEY_B]
    f = await upload(a, jsonl([line("x", "/v1/completions", {"model": "fake-llm", "prompt": "a"})]))
    batch = await a.batches.create(input_file_id=f.id, endpoint="/v1/completions", completion_window="24h")
    with pytest.raises(openai.NotFoundError):
        await b.files.retrieve(f.id)
    with pytest.raises(openai.NotFoundError):
        await b.files.content(f.id)
    with pytest.raises(openai.NotFoundError):
        await b.files.delete(f.id)
    with pytest.raises(openai.NotFoundError):
        await b.batches.retrieve(batch.id)
    with pytest.raises(openai.NotFoundError):
        await b.batches.cancel(batch.id)
    with pytest.raises(openai.NotFoundError):  # another key's file cannot be a batch's input
        await b.batches.create(input_file_id=f.id, endpoint="/v1/completions", completion_window="24h")
    assert f.id not in [x.id for x in (await b.files.list()).data]
    assert batch.id not in [x.id for x in (await b.batches.list()).data]
    assert f.id in [x.id for x in (await a.files.list()).data]
    assert batch.id in [x.id for x in (await a.batches.list()).data]
    await wait_done(a, batch.id)


async def test_list_batches_pages_with_after_and_limit(app):
    client = app.clients[KEY_B]
    f = await upload(client, jsonl([line("x", "/v1/completions", {"model": "fake-llm", "prompt": "a"})]))
    ids = [(await client.batches.create(input_file_id=f.id, endpoint="/v1/completions", completion_window="24h")).id for _ in range(3)]
    r = (await app.http.get("/v1/batches?limit=2", headers={"Authorization": f"Bearer {KEY_B}"})).json()
    validate(r, "ListBatchesResponse")
    assert [b["id"] for b in r["data"]] == ids[::-1][:2] and r["has_more"] is True
    r2 = (await app.http.get(f"/v1/batches?limit=2&after={r['last_id']}", headers={"Authorization": f"Bearer {KEY_B}"})).json()
    assert [b["id"] for b in r2["data"]][:1] == [ids[0]]
    for i in ids:
        await wait_done(client, i)


async def test_file_delete_and_limits(app):
    client = app.clients[KEY_A]
    f = await upload(client, jsonl([line("x", "/v1/completions", {"model": "fake-llm", "prompt": "a"})]))
    deleted = await client.files.delete(f.id)
    validate(deleted.model_dump(exclude_unset=True), "DeleteFileResponse")
    with pytest.raises(openai.NotFoundError):
        await client.files.retrieve(f.id)
    app.service.config = app.service.config.model_copy(update={"max_file_bytes": 100, "max_lines": 2})
    with pytest.raises(openai.BadRequestError) as e:
        await upload(client, b"x" * 101)
    assert "batch.max_file_bytes" in e.value.message and "100" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        await upload(client, b"{}\n{}\n{}\n")
    assert "batch.max_lines" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        await client.files.create(file=("a.jsonl", io.BytesIO(b"{}\n")), purpose="fine-tune")
    assert e.value.body["param"] == "purpose"
    with pytest.raises(openai.BadRequestError) as e:
        await client.batches.create(input_file_id="file-x", endpoint="/v1/moderations", completion_window="24h")
    assert e.value.body["param"] == "endpoint"


def test_store_records_a_line_once(tmp_path):
    store = Store(str(tmp_path / "db.sqlite"))
    assert store.record("b1", 0, "a", True, {"x": 1}, 3, 4) is True
    assert store.record("b1", 0, "a", False, {"x": 2}) is False  # the first result stands
    assert store.counts("b1") == (1, 0, 3, 4)
    store.close()
    reopened = Store(str(tmp_path / "db.sqlite"))
    assert [json.loads(r) for r in reopened.results("b1", True)] == [{"x": 1}] and reopened.done_lines("b1") == {0}


async def test_a_batch_past_its_window_expires_with_unfinished_lines_in_the_error_file(app, tmp_path):
    shift = {"s": 0.0}
    clocked = App(app.router, BatchConfig(storage=str(tmp_path / "f2"), db_path=str(tmp_path / "b2.db"), concurrency=2))
    clocked.service.runner.clock = clocked.service.clock = lambda: time.time() + shift["s"]
    try:
        client = clocked.clients[KEY_A]
        f = await upload(client, slow_lines(20))
        batch = await client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
        await wait_results(clocked.service, batch.id, 2)
        shift["s"] = 25 * 3600
        done, seen = await wait_done(client, batch.id)
        assert done.status == "expired" and done.expired_at, seen
        errors = output_lines((await client.files.content(done.error_file_id)).text)
        expired = [e for e in errors if e["error"] and e["error"]["code"] == "batch_expired"]
        assert expired and all(e["response"] is None for e in expired)
        out = output_lines((await client.files.content(done.output_file_id)).text)
        assert len(out) + len(expired) == 20
        assert len({o["custom_id"] for o in out + expired}) == 20
    finally:
        await clocked.close()


async def test_a_model_unavailable_for_a_while_is_waited_out_not_recorded(app, tmp_path):
    """A 503 (the model loading after a restart) does not use up a line's tries."""
    from deployments.errors import unavailable

    answers = iter([(503, unavailable("loading").body())] * 5)

    async def flaky(endpoint, bodies, models):
        answer = next(answers, None)
        return [answer if answer is not None else (200, {"object": "list", "data": [], "model": "m", "usage": {"prompt_tokens": 1, "total_tokens": 1}})] * len(bodies)

    service = BatchService(BatchConfig(storage=str(tmp_path / "f3"), db_path=str(tmp_path / "b3.db"), max_attempts=1), flaky)
    try:
        f = await service.create_file("o", "in.jsonl", "batch", jsonl([line("a", "/v1/embeddings", {"model": "m", "input": "x"})]))
        batch = await service.create_batch("o", None, {"input_file_id": f["id"], "endpoint": "/v1/embeddings", "completion_window": "24h"})
        await asyncio.wait_for(service.wait(batch["id"]), 30)
        done = await service.get_batch("o", batch["id"])
        assert done["status"] == "completed" and done["request_counts"] == {"total": 1, "completed": 1, "failed": 0}
    finally:
        await service.close()


async def _max_in_flight(tmp_path, name: str, online_at: float | None, lines: int = 12) -> int:
    """Run a chat batch of ``lines`` on a service (concurrency 4, 1 while online) whose execute
    counts the requests in flight; ``online_at``: online traffic seen then, before the batch."""
    in_flight = peak = 0

    async def counting(endpoint, bodies, models):
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.02)
        in_flight -= 1
        return [(200, {"object": "chat.completion", "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})] * len(bodies)

    config = BatchConfig(storage=str(tmp_path / f"{name}-files"), db_path=str(tmp_path / f"{name}.db"),
                         concurrency=4, concurrency_while_online=1, online_hold_s=30)
    service = BatchService(config, counting)
    try:
        if online_at is not None:
            service.online_seen(online_at)
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        f = await service.create_file("o", "in.jsonl", "batch", jsonl([line(f"c{i}", "/v1/chat/completions", body) for i in range(lines)]))
        batch = await service.create_batch("o", None, {"input_file_id": f["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"})
        await asyncio.wait_for(service.wait(batch["id"]), 30)
        assert (await service.get_batch("o", batch["id"]))["request_counts"]["completed"] == lines
    finally:
        await service.close()
    return peak


async def test_batch_lines_yield_to_online_traffic(tmp_path):
    """With no online traffic the batch fills batch.concurrency; online traffic seen within
    online_hold_s holds it to batch.concurrency_while_online; traffic older than that does not."""
    assert await _max_in_flight(tmp_path, "idle", None) == 4
    assert await _max_in_flight(tmp_path, "online", time.time()) == 1
    assert await _max_in_flight(tmp_path, "long-ago", time.time() - 60) == 4


async def test_online_traffic_cuts_the_newest_chat_lines_short_and_runs_them_again(tmp_path):
    """When online traffic starts, the chat lines in flight beyond concurrency_while_online stop
    at once (not when they finish) and run again later: every line is recorded exactly once."""
    in_flight, started, finished = 0, Counter(), Counter()

    async def slow(endpoint, bodies, models):
        nonlocal in_flight
        name = bodies[0]["messages"][0]["content"]
        started[name] += 1
        in_flight += 1
        try:
            await asyncio.sleep(0.4)
        finally:
            in_flight -= 1
        finished[name] += 1
        return [(200, {"object": "chat.completion", "id": name, "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})]

    config = BatchConfig(storage=str(tmp_path / "files"), db_path=str(tmp_path / "b.db"),
                         concurrency=4, concurrency_while_online=1, online_hold_s=0.3)
    service = BatchService(config, slow)
    names = [f"c{i}" for i in range(8)]
    try:
        f = await service.create_file("o", "in.jsonl", "batch", jsonl(
            [line(n, "/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": n}]}) for n in names]))
        batch = await service.create_batch("o", None, {"input_file_id": f["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"})
        deadline = time.monotonic() + 10
        while in_flight < 4:
            assert time.monotonic() < deadline, "the batch never filled its 4 slots"
            await asyncio.sleep(0.01)
        service.online_seen(time.time())
        await asyncio.sleep(0.05)
        assert in_flight == 1, "the three newest lines should have stopped at once"
        await asyncio.wait_for(service.wait(batch["id"]), 30)
        done = await service.get_batch("o", batch["id"])
        assert done["request_counts"] == {"total": 8, "completed": 8, "failed": 0}
        out = [json.loads(l) for l in (await service.file_content("o", done["output_file_id"])).decode().splitlines()]
        assert sorted(o["custom_id"] for o in out) == names
        assert all(o["response"]["body"]["id"] == o["custom_id"] for o in out)
        assert sum(started.values()) == 8 + 3 and all(finished[n] == 1 for n in names)
    finally:
        await service.close()


async def test_slots_drop_to_the_online_share_and_come_back_when_the_hold_ends():
    from deployments.batch.runner import Slots

    slots = Slots(3, 1)
    for _ in range(2):
        await slots.acquire()
    slots.online(time.time() + 0.3)
    start = time.monotonic()
    await asyncio.wait_for(slots.acquire(), 5)  # none starts until the hold ends: 2 in flight > 1
    assert time.monotonic() - start >= 0.25 and slots.in_flight == 3
    slots.online(time.time() + 30)
    for _ in range(3):
        slots.release()
    await asyncio.wait_for(slots.acquire(), 1)  # down to 0 in flight: one may start at once
    waiting = asyncio.ensure_future(slots.acquire())
    await asyncio.sleep(0.05)
    assert not waiting.done(), "a second request must wait while online traffic holds the batch to 1"
    slots.release()
    await asyncio.wait_for(waiting, 1)
    assert Slots(2, 8).low == 2, "the online share is at most the concurrency"


async def test_a_stamp_whose_hold_has_ended_cuts_no_line(tmp_path):
    """Each batch answer carries the front's last online request (0 before its first): one long
    past, or none at all, is no traffic. It started a "spell" once, and with batch.concurrency 48
    cut 40 lines in flight short (run again later) on the first answer after every driver start."""
    from deployments.batch.runner import Slots

    slots = Slots(48, 8)
    for _ in range(40):
        await slots.acquire()
    assert slots.online(0.0 + 5.0) is False and slots.limit() == 48
    assert slots.online(time.time() - 10 + 5.0) is False and slots.limit() == 48
    assert slots.online(time.time() + 5.0) is True and slots.limit() == 8


async def test_online_requests_stamp_the_traffic_the_batch_yields_to(app):
    """A streamed and a plain online chat request stamp the front's online traffic; batch lines,
    which run through execute_lines and not the routes, do not."""
    online = app.asgi.state.serving.online
    before = online.last
    client = app.clients[KEY_A]
    f = await upload(client, jsonl([line("b1", "/v1/chat/completions", {"model": "fake-llm", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})]))
    batch = await client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    await wait_done(client, batch.id)
    assert online.last == before, "a batch line is not online traffic"
    t0 = time.time()
    await client.chat.completions.create(model="fake-llm", messages=[{"role": "user", "content": "hi"}], max_tokens=3)
    assert online.last >= t0
    t1 = time.time()
    stream = await client.chat.completions.create(model="fake-llm", messages=[{"role": "user", "content": "hi"}], max_tokens=3, stream=True)
    async for _ in stream:
        pass
    assert online.last >= t1
    # a long stream stamps as its messages go, not only as it starts (20 tokens, 20 ms a step)
    t2 = time.time()
    stream = await client.chat.completions.create(model="slow-llm", messages=[{"role": "user", "content": "hi"}], max_tokens=20,
                                                  stream=True, extra_body={"ignore_eos": True})
    async for _ in stream:
        pass
    assert online.last - t2 >= 0.2, "the stream's later messages should stamp the traffic"


def test_online_traffic_tells_its_listener_at_most_once_a_second():
    from deployments.routes.common import OnlineTraffic

    heard: list[float] = []
    online = OnlineTraffic()
    online.notify = heard.append
    online.seen()
    online.seen()
    assert len(heard) == 1 and online.last >= heard[0]
    online._notified -= OnlineTraffic.NOTIFY_EVERY_S  # a second later
    online.seen()
    assert len(heard) == 2


async def test_empty_lists_match_the_spec(app):
    """ListFilesResponse requires first_id/last_id as strings; ListBatchesResponse leaves them
    out (optional, not nullable). A key with nothing yet gets both lists empty."""
    headers = {"Authorization": f"Bearer {KEY_B}"}
    files = (await app.http.get("/v1/files", headers=headers)).json()
    validate(files, "ListFilesResponse")
    assert files == {"object": "list", "data": [], "first_id": "", "last_id": "", "has_more": False}
    batches = (await app.http.get("/v1/batches", headers=headers)).json()
    validate(batches, "ListBatchesResponse")
    assert batches == {"object": "list", "data": [], "has_more": False}
    assert (await app.clients[KEY_B].files.list()).data == [] and (await app.clients[KEY_B].batches.list()).data == []


def shifted_app(app, tmp_path, name):
    """A second front and service on their own folder, whose clock ``shift["s"]`` moves on."""
    shift = {"s": 0.0}
    clocked = App(app.router, BatchConfig(storage=str(tmp_path / f"{name}-files"), db_path=str(tmp_path / f"{name}.db"), concurrency=2))
    clocked.service.runner.clock = clocked.service.clock = lambda: time.time() + shift["s"]
    return clocked, shift


async def test_an_uploaded_file_expires_after_its_expires_after(app, tmp_path):
    clocked, shift = shifted_app(app, tmp_path, "expiry")
    try:
        client = clocked.clients[KEY_A]
        data = jsonl([line("x", "/v1/completions", {"model": "fake-llm", "prompt": "a"})])
        f = await client.files.create(file=("in.jsonl", io.BytesIO(data)), purpose="batch",
                                      expires_after={"anchor": "created_at", "seconds": 3600})
        validate(f.model_dump(exclude_unset=True), "OpenAIFile")
        assert f.expires_at == f.created_at + 3600
        kept = await upload(client, data)  # no expires_after: kept until deleted
        assert kept.expires_at is None
        assert {x.id for x in (await client.files.list()).data} == {f.id, kept.id}
        shift["s"] = 3601
        assert [x.id for x in (await client.files.list()).data] == [kept.id]
        for call in (client.files.retrieve, client.files.content, client.files.delete):
            with pytest.raises(openai.NotFoundError):
                await call(f.id)
        with pytest.raises(openai.NotFoundError):  # an expired file is no batch's input
            await client.batches.create(input_file_id=f.id, endpoint="/v1/completions", completion_window="24h")
        assert f.id not in clocked.service.store.expired_files(float("inf"))  # its row is gone
        assert not clocked.service.storage.fs.exists(clocked.service.storage._path(f.id))  # purged, not just hidden
        assert (await client.files.content(kept.id)).content == data
    finally:
        await clocked.close()


@pytest.mark.parametrize("fields, param", [
    ({"expires_after[anchor]": "created_at", "expires_after[seconds]": "3599"}, "expires_after.seconds"),
    ({"expires_after[anchor]": "created_at", "expires_after[seconds]": "2592001"}, "expires_after.seconds"),
    ({"expires_after[anchor]": "last_active_at", "expires_after[seconds]": "3600"}, "expires_after.anchor"),
    ({"expires_after[seconds]": "3600"}, "expires_after.anchor"),
    ({"expires_after": "3600"}, "expires_after"),
    ({"expires_after[anchor]": "created_at", "expires_after[seconds]": "3600", "expires_after[days]": "1"}, "expires_after.days"),
    ({"filename": "other.jsonl"}, "filename"),
])
async def test_an_upload_with_a_bad_or_unknown_field_is_a_400_naming_it(app, fields, param):
    r = await app.http.post("/v1/files", headers={"Authorization": f"Bearer {KEY_A}"},
                            files={"file": ("in.jsonl", b"{}\n")}, data={"purpose": "batch", **fields})
    assert r.status_code == 400, r.text
    validate(r.json(), "ErrorResponse")
    assert r.json()["error"]["param"] == param


async def test_an_upload_field_given_twice_or_without_its_file_is_a_400(app):
    headers = {"Authorization": f"Bearer {KEY_A}"}
    twice = await app.http.post("/v1/files", headers=headers, files=[("file", ("a.jsonl", b"{}\n")), ("purpose", (None, "batch")), ("purpose", (None, "batch"))])
    assert twice.status_code == 400 and twice.json()["error"]["param"] == "purpose"
    no_file = await app.http.post("/v1/files", headers=headers, files=[("purpose", (None, "batch"))])
    assert no_file.status_code == 400 and no_file.json()["error"]["param"] == "file"
    not_a_form = await app.http.post("/v1/files", headers=headers, json={"purpose": "batch"})
    assert not_a_form.status_code == 400 and not_a_form.json()["error"]["param"] == "file"
    two_files = await app.http.post("/v1/files", headers=headers, data={"purpose": "batch"},
                                    files=[("file", ("a.jsonl", b"{}\n")), ("file", ("b.jsonl", b"{}\n"))])
    assert two_files.status_code == 400 and two_files.json()["error"]["param"] == "file"
    text_file = await app.http.post("/v1/files", headers=headers, data={"purpose": "batch", "file": "{}"})
    assert text_file.status_code == 400 and text_file.json()["error"]["param"] == "file"
    file_purpose = await app.http.post("/v1/files", headers=headers, files=[("file", ("a.jsonl", b"{}\n")), ("purpose", ("p.txt", b"batch"))])
    assert file_purpose.status_code == 400 and file_purpose.json()["error"]["param"] == "purpose"


async def test_output_expires_after_dates_the_output_and_error_files_from_their_creation(app, tmp_path):
    clocked, shift = shifted_app(app, tmp_path, "output-expiry")
    try:
        client = clocked.clients[KEY_A]
        url = "/v1/completions"
        f = await upload(client, jsonl([line("ok", url, {"model": "fake-llm", "prompt": "ab"}), line("bad", url, {"model": "nope", "prompt": "a"})]))
        batch = await client.batches.create(input_file_id=f.id, endpoint=url, completion_window="24h",
                                            output_expires_after={"anchor": "created_at", "seconds": 7200})
        done, seen = await wait_done(client, batch.id)
        assert done.status == "completed", seen
        validate(done.model_dump(exclude_unset=True), "Batch")
        for file_id in (done.output_file_id, done.error_file_id):
            out = await client.files.retrieve(file_id)
            validate(out.model_dump(exclude_unset=True), "OpenAIFile")
            assert out.purpose == "batch_output" and out.expires_at == out.created_at + 7200
            assert out.created_at >= done.created_at  # anchored at the file's creation, not the batch's
        shift["s"] = 7201 + (done.completed_at - done.created_at)
        for file_id in (done.output_file_id, done.error_file_id):
            with pytest.raises(openai.NotFoundError):
                await client.files.content(file_id)
        assert {x.id for x in (await client.files.list()).data} == {f.id}
    finally:
        await clocked.close()


@pytest.mark.parametrize("extra, param", [
    ({"output_expires_after": {"anchor": "created_at", "seconds": 60}}, "output_expires_after.seconds"),
    ({"output_expires_after": {"anchor": "created_at", "seconds": 30 * 86400 + 1}}, "output_expires_after.seconds"),
    ({"output_expires_after": {"anchor": "completed_at", "seconds": 3600}}, "output_expires_after.anchor"),
    ({"output_expires_after": {"seconds": 3600}}, "output_expires_after.anchor"),
    ({"output_expires_after": {"anchor": "created_at", "seconds": 3600, "x": 1}}, "output_expires_after.x"),
    ({"metadata": {"k" * 65: "v"}}, "metadata"),
    ({"metadata": {"k": "v" * 513}}, "metadata"),
    ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
    ({"endpoint": "/v1/responses"}, "endpoint"),
    ({"endpoint": "/v1/moderations"}, "endpoint"),
    ({"completion_window": "1h"}, "completion_window"),
    ({"bogus": 1}, "bogus"),
])
async def test_batch_create_fields_the_server_cannot_honour_are_a_400_naming_them(app, extra, param):
    body = {"input_file_id": "file-x", "endpoint": "/v1/completions", "completion_window": "24h", **extra}
    r = await app.http.post("/v1/batches", headers={"Authorization": f"Bearer {KEY_A}"}, json=body)
    assert r.status_code == 400, r.text
    validate(r.json(), "ErrorResponse")
    assert r.json()["error"]["param"].split(".")[0] == param.split(".")[0]
    if "." in param:
        assert r.json()["error"]["param"] == param


async def test_an_expired_input_of_an_unfinished_batch_is_kept_until_the_batch_is_done(app, tmp_path):
    clocked, shift = shifted_app(app, tmp_path, "input-expiry")
    try:
        client = clocked.clients[KEY_A]
        f = await client.files.create(file=("in.jsonl", io.BytesIO(slow_lines(12))), purpose="batch",
                                      expires_after={"anchor": "created_at", "seconds": 3600})
        batch = await client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
        shift["s"] = 3601
        await upload(client, slow_lines(1))  # an upload purges expired files
        assert clocked.service.storage.fs.exists(clocked.service.storage._path(f.id))
        done, seen = await wait_done(client, batch.id)
        assert done.status == "completed" and done.request_counts.completed == 12, seen
        await client.files.list()
        assert not clocked.service.storage.fs.exists(clocked.service.storage._path(f.id))
    finally:
        await clocked.close()


def _spec_schema(name):
    from tests.spec import SCHEMAS_PATH

    return json.loads(SCHEMAS_PATH.read_text())["schemas"][name]


def test_every_field_the_spec_allows_on_create_is_handled():
    """Each field of the spec's CreateBatchRequest / CreateFileRequest is a field of ours (so it is
    honoured or a 400 naming it, never dropped), and the expiry bounds are the spec's."""
    from deployments.protocol import batch as bp

    assert set(_spec_schema("CreateBatchRequest")["properties"]) == set(bp.CreateBatchRequest.model_fields)
    assert set(_spec_schema("CreateFileRequest")["properties"]) == {"file", *bp.CreateFileForm.model_fields}
    for name in ("FileExpirationAfter", "BatchFileExpirationAfter"):
        spec = _spec_schema(name)["properties"]
        assert spec["anchor"]["enum"] == ["created_at"]
        assert (spec["seconds"]["minimum"], spec["seconds"]["maximum"]) == (bp.MIN_EXPIRY_S, bp.MAX_EXPIRY_S)


async def test_openapi_documents_the_files_and_batches_routes(app):
    document = app.asgi.openapi()
    answers = {
        ("/v1/files", "post"): "FileObject", ("/v1/files", "get"): "FileList", ("/v1/files/{file_id}", "get"): "FileObject",
        ("/v1/files/{file_id}", "delete"): "FileDeleted", ("/v1/batches", "post"): "BatchObject",
        ("/v1/batches", "get"): "BatchList", ("/v1/batches/{batch_id}", "get"): "BatchObject",
        ("/v1/batches/{batch_id}/cancel", "post"): "BatchObject",
    }
    for (path, method), model in answers.items():
        responses = document["paths"][path][method]["responses"]
        assert responses["200"]["content"]["application/json"]["schema"] == {"$ref": f"#/components/schemas/{model}"}, path
        for status in ("400", "401", "404", "429", "503"):
            assert responses[status]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorResponse"}
    content = document["paths"]["/v1/files/{file_id}/content"]["get"]["responses"]
    assert list(content["200"]["content"]) == ["application/octet-stream"]
    assert document["paths"]["/v1/batches"]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/CreateBatchRequest")
    form = document["paths"]["/v1/files"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert set(form["properties"]) == {"file", "purpose", "expires_after[anchor]", "expires_after[seconds]"}
    assert form["required"] == ["file", "purpose"]
    assert document["components"]["schemas"]["FileList"]["required"] == ["object", "data", "first_id", "last_id", "has_more"]


async def test_an_idle_driver_asks_to_exit_only_with_no_call_and_no_batch_running(tmp_path):
    """The batch driver's idle exit (``ray_driver.BatchDriverActor``, here as a plain object, its
    exit request recorded): not while a call or a batch runs, and only after the idle time."""
    from deployments.batch.ray_driver import BatchDriverActor

    config = BatchConfig(storage=str(tmp_path / "files"), db_path=str(tmp_path / "b.db"), driver_idle_exit_s=0.3)
    driver = BatchDriverActor("openai", config)
    asked = []
    driver._request_exit = lambda: asked.append(driver.idle_for())
    assert (await driver.call("list_batches", "", None, 20))["data"] == []
    assert driver.idle_for() is not None and driver.idle_for() < 0.3
    assert await driver.exit_if_idle() is False  # not idle long enough yet: stays

    release = asyncio.Event()
    batch = asyncio.get_running_loop().create_task(release.wait())
    driver.service.runner.tasks["batch_running"] = batch  # a batch being driven
    await asyncio.sleep(1.0)
    assert asked == [] and driver.idle_for() is None

    call = asyncio.get_running_loop().create_task(driver.call("wait", "batch_running"))  # a call in flight
    release.set()
    await call
    await asyncio.sleep(0.1)
    assert asked == [] and driver.idle_for() < 0.3  # the call just ended: idle time starts again
    await asyncio.sleep(0.8)
    assert asked and all(idle >= 0.3 for idle in asked)
    driver._watch.cancel()


async def test_a_driver_with_idle_exit_off_never_asks(tmp_path):
    from deployments.batch.ray_driver import BatchDriverActor

    config = BatchConfig(storage=str(tmp_path / "files"), db_path=str(tmp_path / "b.db"), driver_idle_exit_s=0)
    driver = BatchDriverActor("openai", config)
    await driver.start()
    assert driver._watch is None and await driver.exit_if_idle() is False
