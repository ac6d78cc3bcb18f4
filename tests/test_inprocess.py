"""Co-located model servers (``deployments/inprocess.py``): the handle interface the routes use,
and per-model admission with Serve's meaning of max_ongoing_requests / max_queued_requests."""

from __future__ import annotations

import asyncio

import pytest

from deployments.errors import APIError, ErrorKind
from deployments.inprocess import Admission, LocalModel


class Server:
    """A model server stand-in whose calls wait until released."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.closed = 0

    async def chat(self, body):
        await self.gate.wait()
        return {"echo": body}

    async def chat_stream(self, body):
        try:
            for i in range(3):
                await self.gate.wait()
                yield f"{body}-{i}"
        finally:
            self.closed += 1

    async def stats(self):
        return {"running": 0}

    def info(self):
        return {"id": "m"}


async def test_calls_and_streams_reach_the_server_through_the_handle_interface():
    server = Server()
    server.gate.set()
    handle = LocalModel(Admission(2, 0, 3), server).handle()
    assert await handle.chat.remote("hi") == {"echo": "hi"}
    assert [m async for m in handle.options(stream=True).chat_stream.remote("s")] == ["s-0", "s-1", "s-2"]
    assert await handle.info.remote() == {"id": "m"}
    assert handle.model.admission.running == 0 and handle.model.admission.queued == 0


async def test_admission_runs_then_queues_then_refuses_with_429():
    server = Server()
    admission = Admission(max_ongoing=2, max_queued=1, retry_after_s=3)
    handle = LocalModel(admission, server).handle()
    running = [asyncio.create_task(handle.chat.remote(i)) for i in range(2)]
    await asyncio.sleep(0)
    queued = asyncio.create_task(handle.chat.remote("q"))
    await asyncio.sleep(0)
    assert (admission.running, admission.queued) == (2, 1)
    with pytest.raises(APIError) as refused:
        await handle.chat.remote("one too many")
    assert refused.value.kind is ErrorKind.RATE_LIMITED and refused.value.status == 429
    assert refused.value.headers()["Retry-After"] == "3"
    # metadata calls need no slot: a probe sees a busy model, not a refusal
    assert await handle.stats.remote() == {"running": 0}
    server.gate.set()
    assert [r["echo"] for r in await asyncio.gather(*running, queued)] == [0, 1, "q"]
    assert (admission.running, admission.queued) == (0, 0)


async def test_a_stream_holds_its_slot_until_closed_early():
    server = Server()
    server.gate.set()
    admission = Admission(max_ongoing=1, max_queued=0, retry_after_s=1)
    handle = LocalModel(admission, server).handle().options(stream=True)
    stream = handle.chat_stream.remote("a")
    assert await anext(stream) == "a-0"
    assert admission.running == 1
    with pytest.raises(APIError):  # the slot is taken while the stream is open
        await anext(handle.chat_stream.remote("b"))
    await stream.aclose()  # a client that went away
    assert admission.running == 0 and server.closed == 1
    assert [m async for m in handle.chat_stream.remote("c")] == ["c-0", "c-1", "c-2"]


async def test_unbounded_queue_never_refuses():
    server = Server()
    admission = Admission(max_ongoing=1, max_queued=-1, retry_after_s=1)
    handle = LocalModel(admission, server).handle()
    calls = [asyncio.create_task(handle.chat.remote(i)) for i in range(20)]
    await asyncio.sleep(0)
    assert (admission.running, admission.queued) == (1, 19)
    server.gate.set()
    assert len(await asyncio.gather(*calls)) == 20


async def test_a_model_still_loading_is_a_503_with_retry_after():
    model = LocalModel(Admission(1, 0, 4))
    with pytest.raises(APIError) as e:
        model.handle().chat.remote("hi")
    assert e.value.status == 503 and e.value.headers()["Retry-After"] == "4"
    model.server = Server()
    model.server.gate.set()
    assert await model.handle().chat.remote("hi") == {"echo": "hi"}
