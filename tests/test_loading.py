"""One model loads in a process at a time (deployments/loading.py)."""

from __future__ import annotations

import asyncio
import threading
import time

from deployments import loading


async def test_loads_never_overlap():
    inside = 0
    most = 0
    guard = threading.Lock()

    def load(_):
        nonlocal inside, most
        with guard:
            inside += 1
            most = max(most, inside)
        time.sleep(0.05)
        with guard:
            inside -= 1
        return _

    results = await asyncio.gather(*(loading.exclusive(load, i) for i in range(6)))
    assert results == list(range(6))
    assert most == 1


async def test_settled_waits_for_a_quiet_moment():
    started = time.monotonic()
    task = asyncio.create_task(loading.exclusive(time.sleep, 0.3))
    await asyncio.sleep(0.01)
    await loading.settled(quiet_s=0.1)
    assert task.done()
    assert time.monotonic() - started >= 0.4  # the load (0.3 s) and then the quiet pause (0.1 s)


async def test_a_failed_load_releases_the_lock():
    def fail():
        raise ValueError("broken model")

    try:
        await loading.exclusive(fail)
    except ValueError:
        pass
    assert await asyncio.wait_for(loading.exclusive(lambda: "next"), timeout=5) == "next"
