"""Per-key rate limits through a running graph with TWO front replicas (``serve run``, HTTP, the
official client): the limit holds over both, since they lease a key's requests from one shared
ledger actor.

The app is ``serve_config.yaml`` cut down to the embedding model, as a deployment of its own
(so both front replicas are ready once they start), behind two ``Ingress`` replicas, with keys
from an ``API_KEYS_FILE``. Which replica answered is read from Ray Serve's access log of each
replica (every answer carries its request id in ``x-request-id``)."""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

import openai
import pytest

from tests.conftest import openai_clients, start_app

pytestmark = pytest.mark.graph

LIMITED, WARM = "sk-graph-rpm10", "sk-graph-warm"
RPM = 10
EMBED = {"model": "all-minilm-l6-v2", "input": "rate limits"}
SERVE_LOGS = Path("/tmp/ray/session_latest/logs/serve")


def _tweak(config):
    app = config["applications"][0]
    embedding = dict(app["args"]["embeddings"][0])
    embedding["colocated"] = False
    embedding["deployment"] = {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.5}}
    app["args"] = {"server": {"retry_after_s": 1}, "embeddings": [embedding]}
    app["deployments"] = [{"name": "Ingress", "num_replicas": 2, "ray_actor_options": {"num_cpus": 0.25}}]


@pytest.fixture(scope="module")
def app():
    tmp = Path(tempfile.mkdtemp(prefix="ratelimit-"))
    keys = tmp / "keys"
    keys.write_text(f"{LIMITED}  *  rpm={RPM}\n{WARM}  *  rpm=100000\n")
    served = start_app("serve_config.yaml", tmp, _tweak, env={"API_KEYS_FILE": str(keys)})
    yield served
    served.stop()


def replica_of(request_ids: set[str]) -> dict[str, str]:
    """Which front replica's access log names each request id."""
    found = {}
    for log in SERVE_LOGS.glob("replica_openai_Ingress_*.log"):
        text = log.read_text(errors="replace")
        found.update({rid: log.name for rid in request_ids if rid in text})
    return found


async def _embed(client: openai.AsyncOpenAI):
    """(status, headers) of one embeddings request; RateLimitError is the official client's 429."""
    try:
        raw = await client.embeddings.with_raw_response.create(**EMBED)
        return 200, raw.headers, None
    except openai.RateLimitError as exc:
        return 429, exc.response.headers, exc


async def test_rpm_holds_across_two_front_replicas(app):
    _, aclient = openai_clients(app, timeout=60)
    warm = aclient.with_options(api_key=WARM)
    # Both front replicas serving limited keys (each has reached the shared ledger): a bounded wait
    # on a condition, not a sleep.
    ids: set[str] = set()
    deadline = time.monotonic() + 90
    while len(set(replica_of(ids).values())) < 2:
        assert time.monotonic() < deadline, f"not both front replicas answered: {replica_of(ids)}"
        answers = await asyncio.gather(*(_embed(warm) for _ in range(8)))
        assert all(status == 200 for status, _, _ in answers)
        ids |= {headers["x-request-id"] for _, headers, _ in answers}
        await asyncio.sleep(0.5)  # the access logs are written asynchronously

    limited = aclient.with_options(api_key=LIMITED)
    answers = await asyncio.gather(*(_embed(limited) for _ in range(2 * RPM)))
    statuses = [status for status, _, _ in answers]
    assert statuses.count(200) == RPM and statuses.count(429) == RPM, statuses
    for status, headers, error in answers:
        assert headers["x-ratelimit-limit-requests"] == str(RPM)
        assert headers["x-ratelimit-reset-requests"].endswith("s")
        assert 0 <= int(headers["x-ratelimit-remaining-requests"]) < RPM
        if status == 429:
            assert headers["x-ratelimit-remaining-requests"] == "0"
            assert 1 <= int(headers["retry-after"]) <= 60
            assert error.body["type"] == "requests" and error.body["code"] == "rate_limit_exceeded"
            assert "rpm" in error.body["message"]
    served = {}
    request_ids = {headers["x-request-id"] for _, headers, _ in answers}
    deadline = time.monotonic() + 30
    while len(served) < len(request_ids) and time.monotonic() < deadline:
        served = replica_of(request_ids)
        await asyncio.sleep(0.5)
    by_replica = {
        name: sorted(statuses[i] for i, (_, h, _) in enumerate(answers) if served.get(h["x-request-id"]) == name)
        for name in set(served.values())
    }
    # Each replica on its own would admit up to RPM of its own requests: with requests on both,
    # more than RPM in all. Exactly RPM is the shared ledger's doing.
    assert len(by_replica) == 2, f"the requests did not reach both front replicas: {by_replica}"
