"""One model loads in this process at a time: imports, configs, tokenizers and weights.

A front replica builds its co-located models together, each in a worker thread. Imports in two
threads of one process can meet in a circular import of a shared package (transformers,
accelerate): Python's import-deadlock detection then hands one thread a partially initialised
module, and its load fails with an ImportError ("cannot import name ... from partially initialized
module"), seen here as vLLM failing to start, after which ``engine: auto`` would quietly fall back
to transformers. The in-process part of every load runs under one lock instead; what runs in
other processes (vLLM's engine start, the longest part) runs outside it, so the embedding model
still loads while vLLM starts.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, Callable, TypeVar

T = TypeVar("T")

_LOADING = threading.Lock()
_pending = 0  # loads running or waiting for the lock (changed on the event loop only)
_last_change = time.monotonic()


async def exclusive(fn: Callable[..., T], *args: Any) -> T:
    """Run the blocking ``fn(*args)`` in a worker thread once no other load runs in this process."""
    global _pending, _last_change

    def run() -> T:
        with _LOADING:
            return fn(*args)

    _pending += 1
    try:
        return await asyncio.to_thread(run)
    finally:
        _pending -= 1
        _last_change = time.monotonic()


async def settled(quiet_s: float = 0.2, timeout_s: float = 120.0) -> None:
    """Return once no load has run or waited for ``quiet_s`` (or after ``timeout_s``).

    A model's build takes the lock for each of its in-process steps, with only event-loop hops
    between them; a pause of ``quiet_s`` means the builds started so far are past their
    in-process part (vLLM: its engine processes are starting on their own) or done. Used to
    load models in order of importance; the lock, not this, keeps loads apart."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _pending == 0 and time.monotonic() - _last_change >= quiet_s:
            return
        await asyncio.sleep(quiet_s / 4)
