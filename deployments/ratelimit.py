"""Per-key rate limits: requests and tokens per minute (``rpm=N tpm=N`` in ``API_KEYS_FILE``).

Plain Python (no Ray, no web framework): the windows, the leases, the header values and the ASGI
middleware. ``deployments/ratelimit_ray.py`` puts a :class:`Ledger` in one Ray actor per
application, shared by every front replica; the tests, and a replica that cannot reach that
actor, use one in their own process.

* **Windows.** Each key has a fixed one-minute window that starts with its first request after
  the previous one ended. The :class:`Ledger` (the authority) counts the requests it has leased
  out in the window and the tokens reported for it.
* **Requests: leases, exact.** A front replica admits a request of a key from a local *lease*
  of that key's requests and asks the ledger for a new lease only when its lease is used up: one
  hop per lease, none per request. A lease is at most 1/8 of what the window has left (and at
  most 64), so one replica never holds what another one needs, and an exhausted window's last
  requests go one at a time. A lease is valid until the window ends (the replica measures that
  from before it asked, so it never outlives the ledger's window), and a replica gives back a
  lease it has not touched for a reporting interval. The ledger never leases more than ``rpm``
  in a window, so no window admits more than ``rpm`` requests, whatever the number of replicas.
* **Tokens: counted after the answer, approximate across replicas.** Each answer's usage
  (prompt + completion tokens; at the end of a stream) is added to the replica's own count and
  reported to the ledger in the background, every ``FLUSH_S`` while there is anything to report,
  not on any request's path. A request is admitted while the tokens the replica knows of (the
  ledger's total at its last report, plus its own since) are below ``tpm``. So one request may
  overshoot ``tpm``, requests still running are not counted yet, and across replicas the count
  lags by up to one reporting interval.
* **The ledger out of reach** (the actor died or does not answer within its timeout): the
  replica *fails open to its own limits*: it keeps enforcing every key's limits with a ledger of
  its own, so with N replicas a key gets at most N times its limits until the actor answers again
  (it is retried in the background, every ``RETRY_S``). Rate limits share capacity fairly; they
  are not what keeps a key out (authentication is), and refusing every limited key while one
  helper actor restarts would turn a limiter's hiccup into an outage.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import random
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from deployments import jsontext
from deployments.auth import Key
from deployments.errors import APIError, ErrorKind
from deployments.usage import UsageTap

logger = logging.getLogger("ray.serve")

WINDOW_S = 60.0
LEASE_FRACTION = 8  # a lease is at most this fraction of the requests the window has left ...
MAX_LEASE = 64  # ... and at most this many requests
RECHECK_S = 1.0  # a replica whose window has no requests left asks again at most this often
FLUSH_S = 1.0  # token usage and untouched leases go to the ledger this often, while there are any
RETRY_S = 5.0  # how often a replica that fell back to its own limits tries the ledger again
MAX_ASKS = 8  # lease requests for one admission before giving up (a window ending right then)

REQUESTS, TOKENS = "requests", "tokens"
HEADERS = tuple(
    f"x-ratelimit-{what}-{unit}" for unit in (REQUESTS, TOKENS) for what in ("limit", "remaining", "reset")
)


def key_id(key: Key) -> str:
    """How the ledger names a key: a digest, so the secret itself never leaves the front."""
    return hashlib.sha256(key.secret).hexdigest()[:24]


def duration(seconds: float) -> str:
    """A time span as OpenAI's ``x-ratelimit-reset-*`` headers write it: ``20ms``, ``1s``,
    ``59.734s``, ``6m0s``."""
    ms = max(0, round(seconds * 1000))
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    minutes, rest = divmod(ms, 60_000)
    secs = f"{rest / 1000:.3f}".rstrip("0").rstrip(".")
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


# --------------------------------------------------------------------------- the ledger
@dataclass(frozen=True)
class Sync:
    """What a replica learns of one key's window in one hop to the ledger."""

    window: int  # the window's id (random: a new ledger never reuses one)
    reset_in: float  # seconds until the window ends
    granted: int  # requests leased to the caller by this answer
    left: int | None  # requests the window has not leased out yet (None: no request limit)
    tokens: int  # tokens reported for the window, by every replica


@dataclass(frozen=True)
class Report:
    """A replica's news about one key: tokens since its last report, and a lease it gives back."""

    key: str
    rpm: int | None
    tokens: int = 0
    window: int | None = None  # the window of the lease given back
    returned: int = 0


class _Window:
    __slots__ = ("id", "end", "leased", "tokens")

    def __init__(self, end: float) -> None:
        self.id = random.getrandbits(62)
        self.end = end
        self.leased = 0
        self.tokens = 0


class Ledger:
    """The authority on every key's current window: one per application (in a Ray actor, shared
    by the front replicas), or one in a process of its own (tests, the fallback)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, window_s: float = WINDOW_S) -> None:
        self.clock = clock
        self.window_s = window_s
        self._windows: dict[str, _Window] = {}

    def _current(self, key: str, now: float) -> _Window:
        window = self._windows.get(key)
        if window is None or now >= window.end:
            window = self._windows[key] = _Window(now + self.window_s)
        return window

    def _sync(self, window: _Window, now: float, rpm: int | None, granted: int = 0) -> Sync:
        left = None if rpm is None else max(0, rpm - window.leased)
        return Sync(window.id, window.end - now, granted, left, window.tokens)

    def lease(self, key: str, rpm: int | None) -> Sync:
        """Lease requests of ``key``'s window (none without an rpm limit: just its state)."""
        now = self.clock()
        window = self._current(key, now)
        granted = 0
        if rpm is not None:
            left = max(0, rpm - window.leased)
            granted = min(left, max(1, min(MAX_LEASE, left // LEASE_FRACTION)))
            window.leased += granted
        return self._sync(window, now, rpm, granted)

    def report(self, reports: list[Report]) -> dict[str, Sync]:
        """Add reported tokens to each key's current window and take back unused leases of it
        (a lease of a window that has ended is void anyway); each key's state after that."""
        now = self.clock()
        out = {}
        for r in reports:
            window = self._current(r.key, now)
            window.tokens += r.tokens
            if r.returned and r.window == window.id:
                window.leased -= min(r.returned, window.leased)
            out[r.key] = self._sync(window, now, r.rpm)
        return out


class Authority(Protocol):
    """Where a replica's ledger is: in this process, or the application's actor."""

    async def connect(self) -> None: ...

    async def lease(self, key: str, rpm: int | None) -> Sync: ...

    async def report(self, reports: list[Report]) -> dict[str, Sync]: ...


class LocalAuthority:
    """A :class:`Ledger` in this process (one replica on its own; shared, it stands in for the
    actor in the tests)."""

    def __init__(self, ledger: Ledger | None = None) -> None:
        self.ledger = ledger or Ledger()

    async def connect(self) -> None:
        pass

    async def lease(self, key: str, rpm: int | None) -> Sync:
        return self.ledger.lease(key, rpm)

    async def report(self, reports: list[Report]) -> dict[str, Sync]:
        return self.ledger.report(reports)


# --------------------------------------------------------------------------- one front replica
class KeyState:
    """What one replica knows of one key's window, and holds of it."""

    def __init__(self, key: Key) -> None:
        self.key = key
        self.id = key_id(key)
        self.window: int | None = None
        self.expires = 0.0  # local clock: the window ends no earlier than this
        self.synced_at = -math.inf  # when the request of the last applied answer was sent
        self.lease = 0  # requests this replica may admit without asking
        self.left: int | None = None  # requests the window had not leased out, at the last answer
        self.tokens = 0  # the window's tokens, at the last answer
        self.sending = 0  # tokens reported, answer not back yet
        self.unsent = 0  # tokens counted here since
        self.touched = False  # a request was admitted since the last report
        self.recheck = 0.0  # no lease and none left: ask again from this time
        self.lock = asyncio.Lock()

    def used_tokens(self) -> int:
        return self.tokens + self.sending + self.unsent

    def apply(self, sync: Sync, sent_at: float) -> None:
        """Take in the ledger's answer to a request sent at ``sent_at`` (an answer to an older
        request than the last one taken in tells nothing newer, and is dropped)."""
        if sent_at < self.synced_at:
            if sync.window == self.window:
                self.lease += sync.granted  # leased all the same
            return
        self.synced_at = sent_at
        if sync.window != self.window:
            self.window, self.lease = sync.window, 0  # a lease is only good in its own window
        self.expires = sent_at + sync.reset_in
        self.left = sync.left
        self.tokens = sync.tokens
        self.lease += sync.granted
        if sync.granted == 0 and sync.left == 0:
            self.recheck = sent_at + RECHECK_S

    def forget_window(self) -> None:
        self.window, self.expires, self.lease, self.left, self.tokens = None, 0.0, 0, None, 0
        self.synced_at = -math.inf


@dataclass
class Verdict:
    state: KeyState
    refused: str | None = None  # REQUESTS or TOKENS when the request is refused


class ReplicaLimiter:
    """The limits as one front replica applies them: admission from local leases, token counts,
    the header values, and the background reports to the ledger (module docstring)."""

    def __init__(
        self,
        authority: Authority | None = None,
        clock: Callable[[], float] = time.monotonic,
        flush_s: float = FLUSH_S,
        retry_s: float = RETRY_S,
    ) -> None:
        self.remote = authority  # None: this process's ledger is the authority
        self.local = LocalAuthority(Ledger(clock))
        self.clock = clock
        self.flush_s = flush_s
        self.retry_s = retry_s
        self.fallen_back = False
        self._states: dict[bytes, KeyState] = {}
        self._connecting: asyncio.Task | None = None
        self._flusher: asyncio.Task | None = None
        self._retrier: asyncio.Task | None = None

    def start(self) -> None:
        """Reach the shared ledger in the background (call on the serving loop); the first
        limited request waits for it if it has not answered by then."""
        if self.remote is not None and self._connecting is None:
            self._connecting = asyncio.get_running_loop().create_task(self.remote.connect())

    async def close(self) -> None:
        """Stop the background tasks (the replica is stopping; unsent counts are dropped)."""
        tasks = [t for t in (self._connecting, self._flusher, self._retrier) if t is not None and not t.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def state(self, key: Key) -> KeyState:
        state = self._states.get(key.secret)
        if state is None:
            state = self._states[key.secret] = KeyState(key)
        return state

    # ------------------------------------------------------------------ admission
    def _needs_ledger(self, s: KeyState, now: float) -> bool:
        if now >= s.expires:
            return True  # no current window known here
        key = s.key
        if key.tpm is not None and s.used_tokens() >= key.tpm:
            return False
        if key.rpm is None or s.lease > 0:
            return False
        return not (s.left == 0 and now < s.recheck)

    async def admit(self, key: Key) -> Verdict:
        """Admit a request of ``key`` or refuse it; awaits the ledger only when this replica
        holds no lease for it (and at most once per window for a key without an rpm limit)."""
        s = self.state(key)
        for _ in range(MAX_ASKS):
            if not self._needs_ledger(s, self.clock()):
                return self._decide(s)
            async with s.lock:  # one lease request per key at a time; the others wait for it
                if self._needs_ledger(s, self.clock()):
                    await self._lease(s)
        return Verdict(s, REQUESTS)

    def _decide(self, s: KeyState) -> Verdict:
        key = s.key
        if key.tpm is not None and s.used_tokens() >= key.tpm:
            return Verdict(s, TOKENS)
        if key.rpm is not None:
            if s.lease == 0:
                return Verdict(s, REQUESTS)
            s.lease -= 1
        s.touched = True
        if key.tpm is not None:
            self._flush_soon()  # refresh the token count while the key is in use
        return Verdict(s)

    async def _lease(self, s: KeyState) -> None:
        sent = self.clock()
        sync = None
        if self.remote is not None and not self.fallen_back:
            try:
                if self._connecting is None:
                    self.start()
                await asyncio.shield(self._connecting)
                sync = await self.remote.lease(s.id, s.key.rpm)
            except Exception as exc:  # noqa: BLE001 - whatever it is, the ledger is out of reach
                self._fall_back(exc)
                sent = self.clock()
        if sync is None:
            sync = await self.local.lease(s.id, s.key.rpm)
        s.apply(sync, sent)
        if s.lease:
            self._flush_soon()  # to give the lease back if it goes untouched

    # ------------------------------------------------------------------ tokens and reports
    def record(self, key: Key, tokens: int) -> None:
        """Count an answer's tokens for ``key`` (reported in the background)."""
        if tokens > 0 and key.tpm is not None:
            self.state(key).unsent += tokens
            self._flush_soon()

    def _flush_soon(self) -> None:
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush_loop())

    async def _flush_loop(self) -> None:
        try:
            while True:
                await asyncio.sleep(self.flush_s)
                if not await self.flush():
                    return
        finally:
            self._flusher = None

    async def flush(self) -> bool:
        """Report new tokens, give back untouched leases, refresh the token counts of keys in
        use; whether there may be more to do at the next interval."""
        now = self.clock()
        reports, pending = [], False
        for s in self._states.values():
            returned = 0
            if s.lease and (now >= s.expires or not s.touched):
                returned, s.lease = (s.lease if now < s.expires else 0), 0
            refresh = s.touched and s.key.tpm is not None
            pending = pending or s.touched or s.lease > 0
            s.touched = False
            if s.unsent or returned or refresh:
                reports.append(Report(s.id, s.key.rpm, s.unsent, s.window, returned))
                s.sending += s.unsent
                s.unsent = 0
        if not reports:
            return pending
        by_id = {s.id: s for s in self._states.values()}
        sent = self.clock()
        try:
            syncs = await self._report(reports)
        except Exception as exc:  # noqa: BLE001
            self._fall_back(exc)
            syncs = {}
            for r in reports:
                by_id[r.key].unsent += r.tokens  # reported again, to the fallback ledger
        for r in reports:
            s = by_id[r.key]
            s.sending -= r.tokens
            if r.key in syncs:
                s.apply(syncs[r.key], sent)
        return True

    async def _report(self, reports: list[Report]) -> dict[str, Sync]:
        if self.remote is not None and not self.fallen_back:
            return await self.remote.report(reports)
        return await self.local.report(reports)

    # ------------------------------------------------------------------ the ledger out of reach
    def _fall_back(self, exc: BaseException) -> None:
        if self.fallen_back:
            return
        logger.warning(
            "Rate limits: the shared ledger is out of reach (%r); this replica enforces every key's "
            "limits on its own until it answers again (retried every %.0f s)", exc, self.retry_s,
        )
        self.fallen_back = True
        for s in self._states.values():
            s.forget_window()
        self._retrier = asyncio.get_running_loop().create_task(self._retry())

    async def _retry(self) -> None:
        while True:
            await asyncio.sleep(self.retry_s)
            self._connecting = asyncio.get_running_loop().create_task(self.remote.connect())
            try:
                await self._connecting
            except Exception as exc:  # noqa: BLE001
                logger.info("Rate limits: the shared ledger is still out of reach (%r)", exc)
                continue
            self.fallen_back = False
            for s in self._states.values():
                s.forget_window()
            logger.info("Rate limits: the shared ledger answers again; limits hold across replicas again")
            return

    # ------------------------------------------------------------------ what the client sees
    def headers(self, v: Verdict) -> list[tuple[bytes, bytes]]:
        """OpenAI's ``x-ratelimit-*`` headers for a limited key, as of now."""
        s, key, now = v.state, v.state.key, self.clock()
        current = now < s.expires
        reset = duration(s.expires - now) if current else "0s"
        out = []
        if key.rpm is not None:
            remaining = (s.lease + (s.left or 0)) if current else key.rpm
            out += _header_triple(REQUESTS, key.rpm, 0 if v.refused == REQUESTS else remaining, reset)
        if key.tpm is not None:
            out += _header_triple(TOKENS, key.tpm, max(0, key.tpm - s.used_tokens()), reset)
        return out

    def error(self, v: Verdict) -> APIError:
        s, key = v.state, v.state.key
        wait = max(1, math.ceil(s.expires - self.clock()))
        if v.refused == TOKENS:
            kind, what = ErrorKind.RATE_LIMIT_TOKENS, f"tokens per minute (tpm): limit {key.tpm}, used {s.used_tokens()}"
        else:
            kind, what = ErrorKind.RATE_LIMIT_REQUESTS, f"requests per minute (rpm): limit {key.rpm}"
        return APIError(kind, f"Rate limit reached for this API key on {what}. Please try again in {wait}s.", retry_after=wait)


def _header_triple(unit: str, limit: int, remaining: int, reset: str) -> list[tuple[bytes, bytes]]:
    return [
        (f"x-ratelimit-limit-{unit}".encode(), str(limit).encode()),
        (f"x-ratelimit-remaining-{unit}".encode(), str(remaining).encode()),
        (f"x-ratelimit-reset-{unit}".encode(), reset.encode()),
    ]


# --------------------------------------------------------------------------- HTTP
class RateLimit:
    """ASGI middleware, inside ``Authenticate`` (which leaves the caller's key in
    ``scope["state"]["key"]``): every POST of a key with limits is admitted or refused with 429,
    and its answer carries the ``x-ratelimit-*`` headers (streams too: they go with the response
    start); its tokens are counted when the answer ends. Other requests and keys without limits
    pass straight through. Pure ASGI, so it never gets between a stream and its client."""

    def __init__(self, app, limiter: ReplicaLimiter) -> None:
        self.app = app
        self.limiter = limiter

    async def __call__(self, scope, receive, send):
        key = scope.get("state", {}).get("key") if scope["type"] == "http" else None
        if key is None or not key.limited or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        limiter = self.limiter
        verdict = await limiter.admit(key)
        if verdict.refused:
            return await _refuse(send, limiter.error(verdict), limiter.headers(verdict))
        tap = UsageTap() if key.tpm is not None else None

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), *limiter.headers(verdict)]}
                if tap is not None:
                    tap.start(message)
            elif tap is not None and message["type"] == "http.response.body":
                tap.feed(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            if tap is not None:
                limiter.record(key, tap.tokens(scope["state"].get("usage")))


async def _refuse(send, error: APIError, headers: list[tuple[bytes, bytes]]) -> None:
    body = jsontext.dumps(error.body())
    extra = [(name.lower().encode(), value.encode()) for name, value in error.headers().items()]
    start: dict[str, Any] = {
        "type": "http.response.start",
        "status": error.status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *extra, *headers],
    }
    await send(start)
    await send({"type": "http.response.body", "body": body})
