"""Kill a replica with SIGKILL under load and check what the issue asks of the recovery.

``kill_and_recover`` kills every process of one deployment's replica (``ray::ServeReplica:<app>:
<deployment>``) while load runs on a model it serves, then measures: the time until the model
answers again (at most 60 s), that it keeps answering for a while after (no flap), that no
descendant of the dead replica (vLLM's EngineCore and its worker, by PID recorded before the
kill) survives it, and that the machine's available memory is back within 1 GiB of what it was
before the kill. The answer must come from a new replica process: Ray's router may hold requests
for it instead of failing them, so an outage can pass with no failed request, and then the
first answer after the kill must end after the new replica started. Every request of the load
is bounded by a timeout; each outcome is recorded.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import time
from dataclasses import dataclass, field

import httpx
import psutil

RECOVERY_BOUND_S = 60.0
STABLE_FOR_S = 5.0  # after the first answer, every probe and every load request must succeed this long
MEMORY_SLACK_MIB = 1024.0
REQUEST_TIMEOUT_S = 60.0


def is_replica_title(cmdline: str, app: str, deployment: str) -> bool:
    """Whether a process title (its command line) is that of ``deployment``'s replica in ``app``.

    Ray titles a replica ``ray::ServeReplica:<app>:<deployment>`` while it is idle and appends
    ``.<method>`` while one of its methods runs (the controller's health checks and routing-stats
    calls, a request): both are the replica. A deployment whose name extends this one's
    (``llm-a`` and ``llm-a-2``) is not."""
    marker = re.escape(f"ServeReplica:{app}:{deployment}")
    title = re.compile(rf"(?:^|::){marker}(?:\.[A-Za-z_]\w*)?$")
    return any(title.search(part) for part in cmdline.split())


def replica_processes(app: str, deployment: str) -> list[psutil.Process]:
    """The live processes of ``deployment``'s replicas in application ``app``."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        try:
            cmdline = " ".join(proc.info["cmdline"] or ())
        except (psutil.Error, TypeError):
            continue
        if proc.info["status"] != psutil.STATUS_ZOMBIE and is_replica_title(cmdline, app, deployment):
            found.append(proc)
    return found


def alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    """Those of ``procs`` still running: the same process (PID and start time), not a zombie."""
    live = []
    for proc in procs:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                live.append(proc)
        except psutil.Error:
            pass
    return live


def mem_available_mib() -> float:
    for line in open("/proc/meminfo"):
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo")


@dataclass
class Outcome:
    started: float
    ended: float
    kind: str  # "stream", "chat", "embed"
    status: int  # HTTP status; 0 for a transport error
    result: str  # "complete", "error-event", "incomplete", an error type, or the transport error
    retry_after: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.result == "complete"


def _error_type(text: str) -> str:
    try:
        return json.loads(text)["error"]["type"]
    except (ValueError, KeyError, TypeError):
        return "not-an-openai-error-body"


async def one_request(client: httpx.AsyncClient, kind: str, model: str, max_tokens: int = 32) -> Outcome:
    """One request, its outcome classified; a stream is ``complete`` only with all its tokens
    and exactly one ``[DONE]`` at the end."""
    started = time.monotonic()
    try:
        if kind == "embed":
            r = await client.post("/v1/embeddings", json={"model": model, "input": ["the sea", "a ship at sea"]})
            if r.status_code == 200:
                data = r.json()["data"]
                result = "complete" if len(data) == 2 and all(d["embedding"] for d in data) else "incomplete"
            else:
                result = _error_type(r.text)
            return Outcome(started, time.monotonic(), kind, r.status_code, result, r.headers.get("retry-after"))
        body = {
            "model": model,
            "messages": [{"role": "user", "content": "Tell me about the sea."}],
            "max_tokens": max_tokens,
            "ignore_eos": True,
            "stream": kind == "stream",
        }
        if kind == "chat":
            r = await client.post("/v1/chat/completions", json=body)
            if r.status_code == 200:
                usage = r.json()["usage"]
                result = "complete" if usage["completion_tokens"] == max_tokens else "incomplete"
            else:
                result = _error_type(r.text)
            return Outcome(started, time.monotonic(), kind, r.status_code, result, r.headers.get("retry-after"))
        body["stream_options"] = {"include_usage": True}
        async with client.stream("POST", "/v1/chat/completions", json=body) as r:
            text = (await r.aread()).decode()
            if r.status_code != 200:
                return Outcome(started, time.monotonic(), kind, r.status_code, _error_type(text), r.headers.get("retry-after"))
        events = [e[len("data: "):] for e in text.split("\n\n") if e.startswith("data: ")]
        if events[-1:] != ["[DONE]"] or events.count("[DONE]") != 1:
            result = "incomplete"
        elif any('"error"' in e for e in events[:-1]):
            result = "error-event"
        else:
            usage = json.loads(events[-2]).get("usage") or {}
            result = "complete" if usage.get("completion_tokens") == max_tokens else "incomplete"
        return Outcome(started, time.monotonic(), kind, 200, result)
    except httpx.HTTPError as exc:
        return Outcome(started, time.monotonic(), kind, 0, type(exc).__name__)


@dataclass
class Recovery:
    victim_pids: list[int]
    descendant_pids: list[int]
    recovered_s: float | None = None
    descendants_gone_s: float | None = None
    mem_before_mib: float = 0.0
    mem_after_mib: float = 0.0
    outcomes: list[Outcome] = field(default_factory=list)
    probes: list[Outcome] = field(default_factory=list)
    kill_time: float = 0.0
    replacement_started: float | None = None  # when the first new replica process started (monotonic)

    def outage_seen(self) -> float | None:
        """When the first request failed after the kill (its end), or None while none has."""
        failed = [o.ended for o in self.outcomes + self.probes if o.ended >= self.kill_time and not o.ok]
        return min(failed) if failed else None

    def answered_again(self, probe: Outcome) -> float | None:
        """When ``probe`` shows the model answering again after the kill, or None if it does not.

        Once a request has failed after the kill (the outage seen), a probe that started after
        that failure and succeeded is the recovery, from its start. Ray's router may also hide
        the outage completely: a request that had not reached the dead replica, or one sent
        after it, waits in the router for the restarted replica (``_pick_and_reserve_replica``
        retries a dead replica's ``reserve_slot`` on another), so no request need fail; the
        probe started after the kill only answers through the new replica, and its answer came
        at its end, which is then the recovery."""
        if not probe.ok or probe.started < self.kill_time:
            return None
        seen = self.outage_seen()
        if seen is None:
            return probe.ended
        return probe.started if probe.started >= seen else None

    def during_outage(self) -> list[Outcome]:
        """Load requests that were running at the kill or started before the model answered again."""
        end = self.kill_time + (RECOVERY_BOUND_S if self.recovered_s is None else self.recovered_s)
        return [o for o in self.outcomes if o.ended >= self.kill_time and o.started < end]

    def after_recovery(self) -> list[Outcome]:
        start = self.kill_time + (RECOVERY_BOUND_S if self.recovered_s is None else self.recovered_s)
        return [o for o in self.outcomes + self.probes if o.started >= start]

    def summary(self) -> str:
        counts: dict[tuple, int] = {}
        for o in self.during_outage():
            counts[(o.kind, o.status, o.result)] = counts.get((o.kind, o.status, o.result), 0) + 1
        return (
            f"recovered in {self.recovered_s if self.recovered_s is None else round(self.recovered_s, 1)} s, "
            f"engine processes gone after {self.descendants_gone_s if self.descendants_gone_s is None else round(self.descendants_gone_s, 2)} s, "
            f"MemAvailable {self.mem_before_mib:.0f} -> {self.mem_after_mib:.0f} MiB; during the outage: {counts}"
        )


async def kill_and_recover(
    base_url: str, app: str, deployment: str, model: str, kinds: tuple[str, ...], concurrency: int = 4,
    headers: dict | None = None,
) -> Recovery:
    """SIGKILL ``deployment``'s replica while ``concurrency`` loops send ``kinds`` requests for
    ``model``; return what happened (the caller asserts)."""
    victims = replica_processes(app, deployment)
    assert victims, f"no replica process of {app}:{deployment} to kill"
    descendants = [child for proc in victims for child in proc.children(recursive=True)]
    recovery = Recovery([p.pid for p in victims], [p.pid for p in descendants])
    stop = asyncio.Event()
    limits = httpx.Limits(max_connections=concurrency + 2)

    async with httpx.AsyncClient(base_url=base_url, timeout=REQUEST_TIMEOUT_S, limits=limits, headers=headers) as client:

        async def load(i: int) -> None:
            while not stop.is_set():
                outcome = await one_request(client, kinds[i % len(kinds)], model)
                recovery.outcomes.append(outcome)
                if not outcome.ok:
                    await asyncio.sleep(0.2)  # a client that backs off a little (less than Retry-After)

        loops = [asyncio.create_task(load(i)) for i in range(concurrency)]
        try:
            # the load runs before the kill: every replica is busy when it dies
            await asyncio.sleep(2)
            recovery.mem_before_mib = mem_available_mib()
            recovery.kill_time = time.monotonic()
            for proc in victims:
                proc.send_signal(signal.SIGKILL)
            _, survivors = psutil.wait_procs(victims, timeout=10)
            assert not survivors, f"SIGKILL did not end {survivors}"

            async def watch_descendants() -> None:  # when the last of them is gone, to 50 ms
                while alive(descendants):
                    await asyncio.sleep(0.05)
                recovery.descendants_gone_s = time.monotonic() - recovery.kill_time

            watcher = asyncio.create_task(watch_descendants())
            probe_kind = "embed" if kinds == ("embed",) else "chat"
            first_ok = None
            while time.monotonic() - recovery.kill_time < RECOVERY_BOUND_S + STABLE_FOR_S + REQUEST_TIMEOUT_S:
                probe = await one_request(client, probe_kind, model, max_tokens=4)
                recovery.probes.append(probe)
                answered = recovery.answered_again(probe)
                if answered is not None and first_ok is None:
                    first_ok = answered
                    recovery.recovered_s = first_ok - recovery.kill_time
                    if recovery.recovered_s > RECOVERY_BOUND_S:
                        break
                if first_ok is not None and time.monotonic() - first_ok >= STABLE_FOR_S:
                    break
                if first_ok is None and time.monotonic() - recovery.kill_time > RECOVERY_BOUND_S:
                    break
                await asyncio.sleep(0.25)
            watcher.cancel()
            recovery.replacement_started = replacement_started(app, deployment, recovery.victim_pids)
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.gather(*loops), timeout=REQUEST_TIMEOUT_S + 10)
    recovery.mem_after_mib = mem_available_mib()
    return recovery


def replacement_started(app: str, deployment: str, victim_pids: list[int]) -> float | None:
    """When the earliest live replica process of ``deployment`` that is not one of the victims
    started, on ``time.monotonic``'s clock (to the kernel's 10 ms tick), or None if none is."""
    started = [p.create_time() for p in replica_processes(app, deployment) if p.pid not in victim_pids]
    if not started:
        return None
    return min(started) - (time.time() - time.monotonic())


def check_recovery(
    recovery: Recovery, outage_statuses: set[tuple[int, str]], in_flight_statuses: frozenset = frozenset()
) -> None:
    """The issue's assertions on one kill. ``outage_statuses``: the (status, result) pairs a
    request caught by the outage may end with; 503s must carry ``Retry-After``.
    ``in_flight_statuses``: more pairs allowed only for requests already running at the kill."""
    summary = recovery.summary()
    assert recovery.recovered_s is not None and recovery.recovered_s <= RECOVERY_BOUND_S, f"no answer within 60 s: {summary}"
    assert recovery.replacement_started is not None, f"no new replica replaced the killed one: {summary}"
    recovered_at, seen = recovery.kill_time + recovery.recovered_s, recovery.outage_seen()
    if seen is None or seen > recovered_at:  # hidden by the router: the answer must have come from the new replica
        assert recovered_at >= recovery.replacement_started, (
            f"answered before a new replica existed, so the kill missed the serving replica: {summary}"
        )
    bad_after = [o for o in recovery.after_recovery() if not o.ok]
    assert not bad_after, f"the model failed again after it had recovered (flap): {bad_after[:5]}; {summary}"
    assert any(o.ok for o in recovery.after_recovery()), summary
    assert recovery.descendants_gone_s is not None, (
        f"processes of the dead replica survived it: {recovery.descendant_pids}; {summary}"
    )
    assert recovery.mem_after_mib >= recovery.mem_before_mib - MEMORY_SLACK_MIB, f"memory did not come back: {summary}"
    for o in recovery.during_outage():
        if o.ok:
            continue
        allowed = outage_statuses | (in_flight_statuses if o.started < recovery.kill_time else frozenset())
        assert (o.status, o.result) in allowed, f"{o} is not one of {allowed}; {summary}"
        if o.status in (429, 503):
            assert o.retry_after, f"{o} has no Retry-After; {summary}"

