"""``coalesce``: streamed messages produced close together travel as one, and none is held back
past its window, however long the next one takes (the engine busy with other prefills)."""

from __future__ import annotations

import asyncio
import time

import pytest

from deployments.llm.core import coalesce

WINDOW_S = 0.05


async def timed(plan: list[tuple[float, str]], closed: list[str] | None = None):
    """Each message after its delay; records in ``closed`` that the source was closed."""
    try:
        for delay, message in plan:
            await asyncio.sleep(delay)
            yield message
    finally:
        if closed is not None:
            closed.append("closed")


async def received(stream) -> list[tuple[float, str]]:
    start, out = time.monotonic(), []
    async for message in stream:
        out.append((time.monotonic() - start, message))
    return out


async def test_messages_within_a_window_go_together_and_the_first_at_once():
    got = await received(coalesce(timed([(0, "a"), (0.005, "b"), (0.005, "c")]), WINDOW_S))
    assert [m for _, m in got] == ["a", "bc"]
    assert got[0][0] < WINDOW_S


async def test_a_held_message_goes_when_its_window_closes_not_with_the_next_one():
    # "b" comes 10 ms after "a", then the source stalls for 1.5 s before "c"
    got = await received(coalesce(timed([(0, "a"), (0.01, "b"), (1.5, "c")]), WINDOW_S))
    assert [m for _, m in got] == ["a", "b", "c"]
    assert got[1][0] < 0.75, f"'b' was held {got[1][0]:.2f} s, until the stall ended"
    assert got[2][0] >= 1.5


async def test_a_zero_window_sends_every_message_alone():
    got = await received(coalesce(timed([(0, "a"), (0, "b"), (0, "c")]), 0))
    assert [m for _, m in got] == ["a", "b", "c"]


async def test_a_failure_sends_what_came_before_it_then_raises():
    async def failing():
        yield "a"
        yield "b"
        raise ValueError("engine failed")

    stream = coalesce(failing(), 10.0)
    assert await stream.__anext__() == "a"
    assert await stream.__anext__() == "b"  # held in the window, sent before the failure
    with pytest.raises(ValueError, match="engine failed"):
        await stream.__anext__()


async def test_closing_the_stream_mid_stall_closes_its_source():
    closed: list[str] = []
    stream = coalesce(timed([(0, "a"), (30, "never")], closed), WINDOW_S)
    assert await stream.__anext__() == "a"
    await asyncio.wait_for(stream.aclose(), 5)
    assert closed == ["closed"]  # the client went away: the engine's stream is closed (aborted)
