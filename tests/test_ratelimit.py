"""Per-key rate limits without Ray: key-file syntax, the ledger's windows and leases, front
replicas sharing one ledger (the actor's stand-in), token accounting, the fallback, the header
values, and the answers over ASGI (the real ingress app with in-process model servers, as in
tests/test_security.py). A fake clock drives every window; nothing here sleeps to wait."""

from __future__ import annotations

import asyncio
import json
import random

import httpx
import pytest

from deployments import ratelimit
from deployments.api import create_app
from deployments.routing import EMBEDDING, LLM, ModelRoute, Router
from deployments.auth import Key, KeyFileError, KeyStore, parse_key_file
from deployments.config import ServerConfig
from deployments.ratelimit import REQUESTS, TOKENS, Ledger, LocalAuthority, ReplicaLimiter, duration
from deployments.usage import UsageTap
from tests.local import LocalHandle


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def key(rpm=None, tpm=None, secret=b"sk-x") -> Key:
    return Key(secret, None, rpm, tpm)


# --------------------------------------------------------------------------- key file
def test_key_file_limits_and_every_model():
    keys = parse_key_file(
        "sk-a smollm2-135m-instruct rpm=60 tpm=20000\n"
        "sk-b  *  rpm=5   # every model\n"
        "sk-c\ttpm=7\n"
        "sk-d m1, m2 rpm=3\n"
        "sk-e *\n"
        "sk-f m1\n"
    )
    assert [(k.secret, k.models, k.rpm, k.tpm) for k in keys] == [
        (b"sk-a", frozenset({"smollm2-135m-instruct"}), 60, 20000),
        (b"sk-b", None, 5, None),
        (b"sk-c", None, None, 7),
        (b"sk-d", frozenset({"m1", "m2"}), 3, None),
        (b"sk-e", None, None, None),
        (b"sk-f", frozenset({"m1"}), None, None),
    ]
    assert [k.limited for k in keys] == [True, True, True, True, False, False]
    assert "sk-a" not in repr(keys[0])


@pytest.mark.parametrize(
    "line, says",
    [
        ("sk-x * rpm=0", "rpm must be a positive integer, not '0'"),
        ("sk-x * tpm=-5", "tpm must be a positive integer"),
        ("sk-x * rpm=1.5", "rpm must be a positive integer"),
        ("sk-x * rpm=", "rpm must be a positive integer"),
        ("sk-x * rpm=ten", "rpm must be a positive integer"),
        ("sk-x * rps=10", "unknown setting 'rps'"),
        ("sk-x * rpm=1 rpm=2", "rpm is given twice"),
        ("sk-x rpm=1 m1", "models come before the limits"),
    ],
)
def test_a_bad_limit_is_an_error_naming_the_line(line, says):
    with pytest.raises(KeyFileError) as e:
        parse_key_file(f"# keys\nsk-ok m1\n{line}\n")
    assert "line 3" in str(e.value) and says in str(e.value)
    assert "sk-x" not in str(e.value)  # never the key


def test_key_store_from_env(tmp_path):
    path = tmp_path / "keys"
    path.write_text("sk-file * rpm=2\n")
    store = KeyStore.from_env({"API_KEYS": "sk-env", "API_KEYS_FILE": str(path)})
    assert [(k.secret, k.rpm) for k in store.keys] == [(b"sk-env", None), (b"sk-file", 2)]
    assert store.limited and not KeyStore.from_env({"API_KEYS": "sk-env"}).limited
    path.write_text("sk-file * rpm=two\n")
    with pytest.raises(KeyFileError, match=f"API_KEYS_FILE {path}, line 1"):
        KeyStore.from_env({"API_KEYS_FILE": str(path)})


# --------------------------------------------------------------------------- policy
@pytest.mark.parametrize(
    "seconds, text",
    [(0, "0s"), (0.0004, "0s"), (0.02, "20ms"), (0.9994, "999ms"), (1, "1s"), (59.734, "59.734s"),
     (59.9996, "1m0s"), (60, "1m0s"), (90.5, "1m30.5s"), (360, "6m0s"), (-3, "0s")],
)
def test_reset_durations_are_written_as_openai_does(seconds, text):
    assert duration(seconds) == text


def test_the_ledger_never_leases_more_than_rpm_in_a_window():
    clock = Clock()
    ledger = Ledger(clock)
    grants = []
    while (sync := ledger.lease("k", 1000)).granted:
        grants.append(sync.granted)
    assert sum(grants) == 1000 and sync.left == 0
    assert grants[0] == 64 and grants[-1] == 1  # capped; the last ones one at a time
    assert all(g <= max(1, (1000 - sum(grants[:i])) // 8) for i, g in enumerate(grants))
    assert [ledger.lease("k", 10).granted for _ in range(11)] == [0] * 11  # the same window
    assert [ledger.lease("other", 10).granted for _ in range(11)] == [1] * 10 + [0]  # its own
    clock.now += 59
    assert ledger.lease("k", 1000).granted == 0
    clock.now += 1  # the window ends 60 s after it began
    fresh = ledger.lease("k", 1000)
    assert fresh.granted == 64 and fresh.left == 936 and fresh.reset_in == 60 and fresh.window != sync.window


def test_the_ledger_counts_tokens_and_takes_back_leases_of_the_current_window_only():
    clock = Clock()
    ledger = Ledger(clock)
    first = ledger.lease("k", 100)
    assert first.granted == 12 and first.left == 88
    after = ledger.report([ratelimit.Report("k", 100, tokens=30, window=first.window, returned=5)])["k"]
    assert after.tokens == 30 and after.left == 93 and after.granted == 0
    stale = ledger.report([ratelimit.Report("k", 100, tokens=1, window=first.window + 1, returned=7)])["k"]
    assert stale.left == 93 and stale.tokens == 31  # a lease of another window is not taken back
    clock.now += 60
    new = ledger.report([ratelimit.Report("k", 100, tokens=4, window=first.window, returned=7)])["k"]
    assert new.tokens == 4 and new.left == 100  # a new window: tokens from zero, nothing taken back


async def test_one_replica_admits_rpm_requests_a_window_with_headers():
    clock = Clock()
    limiter = ReplicaLimiter(clock=clock)
    k = key(rpm=3)
    seen = []
    for _ in range(4):
        verdict = await limiter.admit(k)
        seen.append((verdict.refused, dict(limiter.headers(verdict))))
    assert [r for r, _ in seen] == [None, None, None, REQUESTS]
    assert [h[b"x-ratelimit-remaining-requests"] for _, h in seen] == [b"2", b"1", b"0", b"0"]
    assert all(h[b"x-ratelimit-limit-requests"] == b"3" and h[b"x-ratelimit-reset-requests"] == b"1m0s" for _, h in seen)
    assert b"x-ratelimit-limit-tokens" not in seen[0][1]  # no tpm: no token headers
    error = limiter.error(verdict)
    assert error.status == 429 and error.kind.type == "requests" and error.code == "rate_limit_exceeded"
    assert error.retry_after == 60 and "rpm" in error.message and "limit 3" in error.message
    clock.now += 42.5
    assert dict(limiter.headers(verdict))[b"x-ratelimit-reset-requests"] == b"17.5s"
    assert limiter.error(verdict).retry_after == 18
    clock.now += 17.5
    assert (await limiter.admit(k)).refused is None  # a new window
    await limiter.close()


class CountingAuthority(LocalAuthority):
    """A shared ledger reached through awaits that yield, as an actor call would."""

    def __init__(self, ledger: Ledger) -> None:
        super().__init__(ledger)
        self.leases = 0

    async def lease(self, key, rpm):
        await asyncio.sleep(0)
        self.leases += 1
        return await super().lease(key, rpm)

    async def report(self, reports):
        await asyncio.sleep(0)
        return await super().report(reports)


async def test_two_replicas_together_never_admit_more_than_rpm():
    """Concurrent requests spread at random over two replicas sharing one ledger: never more
    than rpm admitted; once untouched leases are given back, exactly rpm; far fewer hops than
    requests."""
    clock = Clock()
    shared = CountingAuthority(Ledger(clock))
    replicas = [ReplicaLimiter(shared, clock=clock, flush_s=3600) for _ in range(2)]
    k = key(rpm=200)
    rng = random.Random(7)
    verdicts = await asyncio.gather(*(rng.choice(replicas).admit(k) for _ in range(500)))
    admitted = sum(v.refused is None for v in verdicts)
    assert 200 - 2 * ratelimit.MAX_LEASE < admitted <= 200
    assert shared.leases < 100
    for replica in replicas:  # a reporting interval later: each gives back what it did not touch
        await replica.flush()
        await replica.flush()
    clock.now += ratelimit.RECHECK_S
    later = await asyncio.gather(*(replicas[i % 2].admit(k) for i in range(200)))
    assert admitted + sum(v.refused is None for v in later) == 200
    assert all(v.refused == REQUESTS for v in later[-50:])
    for replica in replicas:
        await replica.close()


async def test_an_idle_replica_does_not_starve_a_busy_one():
    clock = Clock()
    shared = LocalAuthority(Ledger(clock))
    idle, busy = (ReplicaLimiter(shared, clock=clock, flush_s=3600) for _ in range(2))
    k = key(rpm=80)
    assert (await idle.admit(k)).refused is None  # takes a lease of 10 and uses one
    assert idle.state(k).lease == 9
    results = [await busy.admit(k) for _ in range(79)]
    assert sum(v.refused is None for v in results) == 70  # all but the idle replica's lease
    await idle.flush()  # the lease was touched in this interval: kept
    assert idle.state(k).lease == 9
    await idle.flush()  # untouched for a whole interval: given back
    assert idle.state(k).lease == 0
    clock.now += ratelimit.RECHECK_S  # the busy replica asks again after its recheck time
    results = [await busy.admit(k) for _ in range(10)]
    assert [v.refused for v in results] == [None] * 9 + [REQUESTS]
    await idle.close()
    await busy.close()


async def test_a_lease_never_outlives_the_ledgers_window():
    clock = Clock()
    ledger = Ledger(clock)

    class Slow(LocalAuthority):
        async def lease(self, key, rpm):
            clock.now += 0.5  # the request takes half a second to reach the ledger
            return await super().lease(key, rpm)

    limiter = ReplicaLimiter(Slow(ledger), clock=clock)
    k = key(rpm=100)
    await limiter.admit(k)
    state = limiter.state(k)
    assert state.lease == 11 and state.expires == 1000.0 + 60  # from when it was sent
    assert state.expires <= ledger._windows[ratelimit.key_id(k)].end
    clock.now = state.expires
    await limiter.admit(k)  # the old lease is not used: a new window's lease
    window = ledger._windows[ratelimit.key_id(k)]
    assert window.leased == 12 and state.window == window.id and state.lease == 11
    await limiter.close()


async def test_tokens_are_counted_after_answers_and_shared_through_reports():
    clock = Clock()
    shared = LocalAuthority(Ledger(clock))
    a, b = (ReplicaLimiter(shared, clock=clock, flush_s=3600) for _ in range(2))
    k = key(tpm=100)
    assert (await a.admit(k)).refused is None and (await b.admit(k)).refused is None
    a.record(k, 60)
    verdict = await a.admit(k)
    assert verdict.refused is None
    assert dict(a.headers(verdict))[b"x-ratelimit-remaining-tokens"] == b"40"
    a.record(k, 50)  # one answer may go past the limit; the next request is refused
    refused = await a.admit(k)
    assert refused.refused == TOKENS
    error = a.error(refused)
    assert error.kind.type == "tokens" and "tpm" in error.message and "used 110" in error.message
    assert dict(a.headers(refused))[b"x-ratelimit-remaining-tokens"] == b"0"
    assert (await b.admit(k)).refused is None  # b has not heard yet
    await a.flush()  # a's reporting interval
    await b.flush()  # b's: it was in use, so it refreshes its count
    assert b.state(k).used_tokens() == 110 and (await b.admit(k)).refused == TOKENS
    clock.now += 60
    assert (await b.admit(k)).refused is None and b.state(k).used_tokens() == 0  # a new window
    for limiter in (a, b):
        await limiter.close()


async def test_tokens_reported_while_a_report_is_on_its_way_are_not_lost():
    clock = Clock()
    gate = asyncio.Event()

    class Held(LocalAuthority):
        async def report(self, reports):
            await gate.wait()
            return await super().report(reports)

    ledger = Ledger(clock)
    limiter = ReplicaLimiter(Held(ledger), clock=clock, flush_s=3600)
    k = key(tpm=1000)
    await limiter.admit(k)
    limiter.record(k, 10)
    flushing = asyncio.create_task(limiter.flush())
    while limiter.state(k).sending == 0:  # the report is on its way
        await asyncio.sleep(0)
    limiter.record(k, 5)
    assert limiter.state(k).used_tokens() == 15
    gate.set()
    await flushing
    assert limiter.state(k).used_tokens() == 15 and ledger._windows[ratelimit.key_id(k)].tokens == 10
    await limiter.flush()
    assert ledger._windows[ratelimit.key_id(k)].tokens == 15 and limiter.state(k).used_tokens() == 15
    await limiter.close()


async def test_out_of_reach_ledger_falls_back_to_own_limits_and_comes_back():
    clock = Clock()
    shared = Ledger(clock)

    class Flaky(LocalAuthority):
        down = True

        async def connect(self):
            if self.down:
                raise ConnectionError("actor died")

        async def lease(self, key, rpm):
            if self.down:
                raise ConnectionError("actor died")
            return await super().lease(key, rpm)

    flaky = Flaky(shared)
    limiter = ReplicaLimiter(flaky, clock=clock, retry_s=0)
    k = key(rpm=2)
    limiter.start()
    assert [(await limiter.admit(k)).refused for _ in range(3)] == [None, None, REQUESTS]  # still limited
    assert limiter.fallen_back and ratelimit.key_id(k) not in shared._windows
    flaky.down = False
    await limiter._retrier  # the background retry reaches it
    assert not limiter.fallen_back
    assert [(await limiter.admit(k)).refused for _ in range(3)] == [None, None, REQUESTS]
    assert shared._windows[ratelimit.key_id(k)].leased == 2  # from the shared ledger now
    await limiter.close()


def test_usage_tap_reads_answers_without_changing_them():
    def run(start, *bodies, route_usage=None):
        tap = UsageTap()
        tap.start(start)
        for body in bodies:
            tap.feed(body)
        return tap.tokens(route_usage)

    json_answer = {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]}
    sse_answer = {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]}
    usage = {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}
    body = json.dumps({"id": "x", "choices": [{"text": "y" * 1000}], "usage": usage}, separators=(",", ":")).encode()
    assert run(json_answer, body[:600], body[600:]) == 12
    assert run({**json_answer, "status": 400}, b'{"error": {}}') == 0
    text = b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\n'
    assert run(sse_answer, text, text, b": usage " + json.dumps(usage).encode() + b"\n\ndata: [DONE]\n\n") == 12
    assert run(sse_answer, text, text, text) == 3  # cut before its counts: a token per chunk of text
    assert run(sse_answer, text, route_usage={"prompt_tokens": 2, "completion_tokens": 3}) == 5


# --------------------------------------------------------------------------- over HTTP
KEY_FILE = """
sk-unlimited
sk-rpm      *         rpm=2
sk-tpm      fake-llm  tpm=50
sk-embed    minilm    rpm=100 tpm=3
"""
CHAT = {"model": "fake-llm", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}


@pytest.fixture(scope="module")
async def routes(servers):
    _, llm, embedder = servers
    return [ModelRoute("fake-llm", LLM, LocalHandle(llm)), ModelRoute("minilm", EMBEDDING, LocalHandle(embedder))]


def client_for(routes, **server) -> httpx.AsyncClient:
    app = create_app(Router(routes), KeyStore(parse_key_file(KEY_FILE)), ServerConfig(**server))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


def auth(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def limit_headers(r: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in r.headers.items() if k.startswith("x-ratelimit-")}


async def test_over_rpm_is_429_with_openai_headers_and_retry_after(routes):
    async with client_for(routes) as c:
        answers = [await c.post("/v1/chat/completions", json=CHAT, headers=auth("sk-rpm")) for _ in range(3)]
        other = await c.post("/v1/chat/completions", json=CHAT, headers=auth("sk-unlimited"))
    ok1, ok2, refused = answers
    assert [r.status_code for r in answers] == [200, 200, 429]
    assert [r.headers["x-ratelimit-remaining-requests"] for r in answers] == ["1", "0", "0"]
    for r in answers:
        assert r.headers["x-ratelimit-limit-requests"] == "2"
        assert r.headers["x-ratelimit-reset-requests"].endswith("s")
        assert "x-ratelimit-limit-tokens" not in r.headers  # this key has no tpm
    body = refused.json()["error"]
    assert body["type"] == "requests" and body["code"] == "rate_limit_exceeded" and "rpm" in body["message"]
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert "retry-after" not in ok1.headers
    assert other.status_code == 200 and not limit_headers(other)  # a key without limits


async def test_streams_carry_the_headers_and_count_their_tokens(routes):
    async with client_for(routes) as c:
        async with c.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}, headers=auth("sk-tpm")) as r:
            text = (await r.aread()).decode()
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            assert r.headers["x-ratelimit-limit-tokens"] == "50" and r.headers["x-ratelimit-remaining-tokens"] == "50"
            assert "x-ratelimit-limit-requests" not in r.headers  # this key has no rpm
        assert ": usage" not in text and text.endswith("data: [DONE]\n\n")
        second = await c.post("/v1/chat/completions", json=CHAT, headers=auth("sk-tpm"))
        used = second.json()["usage"]["total_tokens"]
        assert second.status_code == 200
        stream_tokens = 50 - int(second.headers["x-ratelimit-remaining-tokens"])
        assert stream_tokens == used >= 25  # the same prompt and answer: the stream was counted
        refused = await c.post("/v1/chat/completions", json={**CHAT, "stream": True}, headers=auth("sk-tpm"))
    assert refused.status_code == 429 and refused.json()["error"]["type"] == "tokens"
    assert refused.headers["x-ratelimit-remaining-tokens"] == "0" and int(refused.headers["retry-after"]) >= 1
    assert "tpm" in refused.json()["error"]["message"]


async def test_embeddings_count_tokens_and_only_posts_are_limited(routes):
    async with client_for(routes) as c:
        first = await c.post("/v1/embeddings", json={"model": "minilm", "input": "hello there world"}, headers=auth("sk-embed"))
        assert first.status_code == 200 and first.headers["x-ratelimit-remaining-tokens"] == "3"
        assert first.headers["x-ratelimit-remaining-requests"] == "99"
        listed = await c.get("/v1/models", headers=auth("sk-embed"))
        assert listed.status_code == 200 and not limit_headers(listed)  # GETs are not limited
        refused = await c.post("/v1/embeddings", json={"model": "minilm", "input": "again"}, headers=auth("sk-embed"))
        assert refused.status_code == 429 and refused.json()["error"]["type"] == "tokens"
        assert refused.headers["x-ratelimit-remaining-requests"] == "99"  # a refused request costs none
        bad = await c.post("/v1/chat/completions", json={"model": "fake-llm"}, headers=auth("sk-rpm"))
        assert bad.status_code == 400 and bad.headers["x-ratelimit-remaining-requests"] == "1"  # counted


async def test_the_official_client_raises_rate_limit_error(routes):
    import openai

    app = create_app(Router(routes), KeyStore(parse_key_file(KEY_FILE)), ServerConfig())
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app))
    client = openai.AsyncOpenAI(base_url="http://test/v1", api_key="sk-rpm", http_client=http, max_retries=0)
    for _ in range(2):
        raw = await client.chat.completions.with_raw_response.create(**CHAT)
        assert raw.headers["x-ratelimit-limit-requests"] == "2"
    with pytest.raises(openai.RateLimitError) as e:
        await client.chat.completions.create(**CHAT)
    assert e.value.status_code == 429 and e.value.body["type"] == "requests"
    assert e.value.response.headers["x-ratelimit-remaining-requests"] == "0"
    await http.aclose()


async def test_cors_exposes_the_rate_limit_headers(routes):
    async with client_for(routes, cors_allow_origins=["http://app.local"]) as c:
        r = await c.post("/v1/chat/completions", json=CHAT, headers={"Origin": "http://app.local", **auth("sk-rpm")})
    exposed = r.headers["access-control-expose-headers"].lower()
    assert r.status_code == 200 and all(name in exposed for name in ratelimit.HEADERS)
