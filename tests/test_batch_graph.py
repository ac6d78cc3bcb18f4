"""The Batch API through the real application (``serve run``, vLLM / MiniLM, the official client):
chat, completion and embedding batches, the driver actor killed mid-batch, and the whole app
restarted mid-batch on the same storage; every custom_id must come back exactly once."""

from __future__ import annotations

import io
import json
import tempfile
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import openai_clients, start_app
from tests.spec import validate

pytestmark = pytest.mark.graph

CHAT, COMPLETIONS, EMBEDDINGS = "/v1/chat/completions", "/v1/completions", "/v1/embeddings"
LLM, EMBED = "smollm2-135m-instruct", "all-minilm-l6-v2"
IDLE_EXIT_S = 4  # the batch driver exits after this long idle (60 s by default); the tests below meet it
SCHEMA = {CHAT: "CreateChatCompletionResponse", COMPLETIONS: "CreateCompletionResponse", EMBEDDINGS: "CreateEmbeddingResponse"}


def _tweak(folder: Path):
    def tweak(config):
        app = config["applications"][0]
        app["args"]["audio"] = []
        app["args"]["batch"] = {"storage": str(folder / "files"), "db_path": str(folder / "batch.db"), "concurrency": 8,
                                "progress_log_s": 2, "driver_idle_exit_s": IDLE_EXIT_S}
    return tweak


@pytest.fixture(scope="module")
def folder():
    return Path(tempfile.mkdtemp(prefix="batch-graph-"))


@pytest.fixture(scope="module")
def app(folder):
    served = start_app("serve_config.yaml", folder, _tweak(folder))
    yield served
    served.stop()


def jsonl(items) -> bytes:
    return b"".join(json.dumps(i).encode() + b"\n" for i in items)


def body_of(url, i):
    if url == CHAT:
        return {"model": LLM, "messages": [{"role": "user", "content": f"Count to {i}."}], "max_tokens": 16, "temperature": 0}
    if url == COMPLETIONS:
        return {"model": LLM, "prompt": f"The number {i} is", "max_tokens": 16, "temperature": 0}
    return {"model": EMBED, "input": [f"sentence number {i}", "another sentence"]}


def submit(client, url, n, extra=()):
    data = jsonl([*({"custom_id": f"r{i}", "method": "POST", "url": url, "body": body_of(url, i)} for i in range(n)), *extra])
    f = client.files.create(file=("in.jsonl", io.BytesIO(data)), purpose="batch")
    return client.batches.create(input_file_id=f.id, endpoint=url, completion_window="24h")


def wait_done(client, batch_id, timeout=300.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = client.batches.retrieve(batch_id)
        if batch.status in ("completed", "failed", "cancelled", "expired"):
            return batch
        time.sleep(0.5)
    raise TimeoutError(f"batch {batch_id} is still {batch.status} after {timeout} s")


def check_output(client, batch, url, n):
    out = [json.loads(l) for l in client.files.content(batch.output_file_id).text.splitlines() if l]
    assert Counter(o["custom_id"] for o in out) == Counter(f"r{i}" for i in range(n))
    for o in out:
        assert o["response"]["status_code"] == 200
        validate(o["response"]["body"], SCHEMA[url])


@pytest.mark.parametrize("url", [CHAT, COMPLETIONS, EMBEDDINGS])
def test_batches_through_the_graph(app, url):
    client = openai_clients(app)[0]
    bad = {"custom_id": "bad", "method": "POST", "url": url, "body": {**body_of(url, 0), "model": "nope"}}  # unknown model: 404
    batch = wait_done(client, submit(client, url, 12, [bad]).id)
    assert batch.status == "completed", batch
    validate(batch.model_dump(exclude_unset=True), "Batch")
    assert batch.request_counts.completed == 12 and batch.request_counts.failed == 1
    check_output(client, batch, url, 12)
    errors = [json.loads(l) for l in client.files.content(batch.error_file_id).text.splitlines()]
    assert errors[0]["custom_id"] == "bad" and errors[0]["response"]["status_code"] == 404


def _driver():
    import ray

    if not ray.is_initialized():
        ray.init(address="auto", namespace="serve", log_to_driver=False)
    return ray.get_actor("batch-driver-openai", namespace="serve")


def _driver_alive() -> bool:
    try:
        _driver()
        return True
    except ValueError:  # no actor of that name: it exited
        return False


def test_an_idle_driver_exits_and_the_next_request_starts_it_again(app):
    client = openai_clients(app)[0]
    batch = wait_done(client, submit(client, EMBEDDINGS, 4).id)
    deadline = time.monotonic() + IDLE_EXIT_S + 30
    while _driver_alive():
        assert time.monotonic() < deadline, "the batch driver did not exit while idle"
        time.sleep(0.5)
    again = client.batches.retrieve(batch.id)  # a new driver, on the same store
    assert again.status == "completed" and again.request_counts.completed == 4, again
    check_output(client, again, EMBEDDINGS, 4)
    assert _driver_alive()
    done = wait_done(client, submit(client, COMPLETIONS, 3).id)
    assert done.status == "completed" and done.request_counts.completed == 3, done


def _wait_progress(client, batch_id, at_least, timeout=120.0):
    deadline = time.monotonic() + timeout
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.request_counts.completed >= at_least:
            return batch
        assert time.monotonic() < deadline and batch.status == "in_progress", batch
        time.sleep(0.2)


def test_killed_driver_resumes_with_each_line_once(app):
    import ray

    client = openai_clients(app)[0]
    n = 48
    batch = submit(client, CHAT, n)
    seen = _wait_progress(client, batch.id, 4)
    assert seen.request_counts.completed < n
    ray.kill(_driver(), no_restart=False)  # Ray restarts it; the new one resumes from the store
    done = wait_done(client, batch.id)
    assert done.status == "completed" and done.request_counts.completed == n, done
    check_output(client, done, CHAT, n)


def test_app_restart_mid_batch_resumes(app, folder):
    client = openai_clients(app)[0]
    n = 48
    batch = submit(client, COMPLETIONS, n)
    _wait_progress(client, batch.id, 4)
    import ray

    ray.shutdown()  # this process's connection to the cluster that is about to stop
    app.stop()
    again = start_app("serve_config.yaml", folder, _tweak(folder))
    try:
        client = openai_clients(again)[0]
        done = wait_done(client, batch.id)
        assert done.status == "completed" and done.request_counts.completed == n, done
        check_output(client, done, COMPLETIONS, n)
    finally:
        again.stop()
