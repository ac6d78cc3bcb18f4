"""Model servers in the front's own process, called like deployments: the fast path.

A co-located model (``colocated: true`` in the config) is built inside each front replica
(:class:`LocalModel`) and called directly through :class:`InProcessHandle`, which has the slice of Ray Serve's
``DeploymentHandle`` the routes use (``handle.method.remote(...)`` awaitable,
``handle.options(stream=True).method.remote(...)`` async-iterable). The routes cannot tell the two
apart, and the model server's public methods stay the only seam. No Ray hop and no pickling: a
streamed chunk goes from the model server's generator to the client's socket in one process.

What Serve's ``max_ongoing_requests`` and ``max_queued_requests`` do for a deployment,
:class:`Admission` does for a co-located model: at most ``max_ongoing`` calls run, at most
``max_queued`` more wait, and a call beyond that is refused at once with the same 429 and
Retry-After a full deployment queue gives. Metadata calls (``info``, ``stats``, ``check_health``)
pass without a slot, so a probe of a busy model sees it busy, not refused.
"""

from __future__ import annotations

import asyncio
from contextlib import aclosing, asynccontextmanager, nullcontext
from typing import Any, AsyncIterator

from deployments.errors import APIError, ErrorKind, unavailable

UNMETERED = frozenset({"info", "stats", "check_health"})


class Admission:
    """Bounds the calls running and waiting for one co-located model."""

    def __init__(self, max_ongoing: int, max_queued: int, retry_after_s: int) -> None:
        self.max_ongoing = max_ongoing
        self.max_queued = max_queued  # -1: no bound, as in Serve
        self.retry_after_s = retry_after_s
        self._slots = asyncio.Semaphore(max_ongoing)
        self.running = 0
        self.queued = 0

    async def enter(self) -> None:
        if self._slots.locked() and 0 <= self.max_queued <= self.queued:
            raise APIError(
                ErrorKind.RATE_LIMITED,
                "The model is at capacity (its queue is full); retry after the time in Retry-After.",
                retry_after=self.retry_after_s,
            )
        self.queued += 1
        try:
            await self._slots.acquire()
        finally:
            self.queued -= 1
        self.running += 1

    def leave(self) -> None:
        self.running -= 1
        self._slots.release()

    @asynccontextmanager
    async def slot(self):
        """Held while a call runs: ``enter`` (or a 429) before it, ``leave`` after it."""
        await self.enter()
        try:
            yield
        finally:
            self.leave()


class LocalModel:
    """A co-located model in this process: its server once built (None while it loads) and its
    admission. Every handle made from it (``handle()``, ``options(stream=True)``) shares both."""

    def __init__(self, admission: Admission, server: Any = None) -> None:
        self.admission = admission
        self.server = server

    def handle(self) -> "InProcessHandle":
        return InProcessHandle(self)

    def replicas(self) -> int:
        """1 once the server is built (it is this process), 0 while it loads."""
        return int(self.server is not None)


class InProcessHandle:
    """A co-located model server behind the deployment-handle interface."""

    def __init__(self, model: LocalModel, stream: bool = False) -> None:
        self.model = model
        self._stream = stream

    def options(self, stream: bool = False, **_: Any) -> "InProcessHandle":
        return InProcessHandle(self.model, stream)

    def __getattr__(self, name: str) -> "_Method":
        if name.startswith("_"):
            raise AttributeError(name)
        return _Method(self.model, name, self._stream)


class _Method:
    def __init__(self, model: LocalModel, name: str, stream: bool) -> None:
        self.model = model
        self.name = name
        self.admission = None if name in UNMETERED else model.admission
        self.stream = stream

    def remote(self, *args: Any):
        server = self.model.server
        if server is None:  # the routes send nothing to a model that is not ready; a late race
            raise unavailable("The model is loading; retry shortly.", self.model.admission.retry_after_s)
        fn = getattr(server, self.name)
        return self._stream_call(fn, args) if self.stream else self._call(fn, args)

    async def _call(self, fn, args: tuple) -> Any:
        async with self.slot():
            return await _value(fn(*args))

    async def _stream_call(self, fn, args: tuple) -> AsyncIterator[Any]:
        """The server's stream; its slot is held until the stream ends or is closed."""
        async with self.slot(), aclosing(fn(*args)) as items:
            async for item in items:
                yield item

    def slot(self):
        """A running slot of the model's admission; metadata calls take none."""
        return nullcontext() if self.admission is None else self.admission.slot()


async def _value(result: Any) -> Any:
    return await result if hasattr(result, "__await__") else result


async def construct(cls, *args: Any, **kwargs: Any):
    """Build a model server whose ``__init__`` is async, the way Ray Serve builds a replica."""
    obj = cls.__new__(cls)
    await obj.__init__(*args, **kwargs)
    return obj
