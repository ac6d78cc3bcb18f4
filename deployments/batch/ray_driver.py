"""The batch driver as a Ray actor: one per application, on the head node.

The actor (``batch-driver-<app>``, in Serve's namespace) holds the :class:`BatchService`: the
SQLite store (on the head node's disk, so a restarted actor finds it), the file storage and the
runner. Every front replica reaches it with ``get_if_exists``: the first creates it, the others
find it. It runs lines through the front deployment's ``batch_lines`` method (a Serve
deployment handle; a chat line or a group of embedding lines a call), which is the online route's
own path (``execute.py``), so a line gets the model routing, key check and error body an online
request gets. Each answer also says when that front replica last served an online request; the
runner keeps to ``batch.concurrency_while_online`` while online traffic goes on. Ray restarts the
actor if it dies (``max_restarts=-1``); it belongs to the front replica that made it, so if that
replica dies it goes too, and the next front replica to call makes a new one. Either way the new
actor resumes every unfinished batch from the store.

An idle driver exits (``batch.driver_idle_exit_s`` with no batch running and no call): on a small
machine every Ray actor's background wake-ups take CPU from the engines (BENCHMARKS.md). The next
Files or Batches request starts a new one, as after a crash. It exits from one of its own methods
(``exit_if_idle``, Ray's ``exit_actor``), which re-checks that it is idle with nothing awaited in
between: a call queued behind it fails with ``RayActorError`` without having run, so the front
retries it on the new driver safely. Ray keeps a dead actor's name taken while any handle to it
lives, so each front holds a ``lifeline`` call open on the driver it uses; it returns when the
driver exits, and the front lets go of its handle.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import ray

from deployments.config import BatchConfig

logger = logging.getLogger("ray.serve")

SERVE_NAMESPACE = "serve"
START_TIMEOUT_S = 120.0
IDLE_CHECK_S = 5.0  # how often an idle-exiting driver looks at itself
NAME_TRIES = 10  # 0.5 s apart: until every front has let go of a driver that exited


class BatchDriverActor:
    def __init__(self, app_name: str, config: BatchConfig, front: str = "Ingress") -> None:
        self.app_name, self.config, self.front = app_name, config, front
        self.service = None
        self._handle = None
        self._calls = 0  # service calls running
        self._active_at = time.monotonic()  # when the last call ended (or the driver started)
        self._watch: asyncio.Task | None = None
        self._exiting = asyncio.Event()

    async def _execute(self, endpoint: str, bodies: list[Any], models: list[str] | None) -> list[tuple[int, Any]]:
        from deployments.errors import unavailable

        if self._handle is None:
            from ray import serve

            self._handle = serve.get_deployment_handle(self.front, app_name=self.app_name)
        response = self._handle.batch_lines.remote(endpoint, bodies, models)
        try:
            reply = await response
        except asyncio.CancelledError:  # cut short (the batch cancelled, or yielding to online traffic)
            response.cancel()  # a cancelled await leaves the call running: this stops it in the front and its engine
            raise
        except Exception as exc:  # noqa: BLE001 - the front is restarting: a retryable 503 for each line
            return [(503, unavailable(f"The front is unavailable: {type(exc).__name__}").body())] * len(bodies)
        self.online_seen(reply["online_at"])  # the front's online traffic: batch lines yield to it
        return reply["answers"]

    async def start(self) -> bool:
        self._active_at = time.monotonic()
        if self.service is None:
            from deployments.batch.service import BatchService

            self.service = BatchService(self.config, self._execute)
            await self.service.start()
            if self.config.driver_idle_exit_s > 0 and self._watch is None:
                self._watch = asyncio.get_running_loop().create_task(self._exit_when_idle())
        return True

    async def call(self, method: str, *args: Any) -> Any:
        self._calls += 1
        try:
            await self.start()
            return await getattr(self.service, method)(*args)
        finally:
            self._calls -= 1
            self._active_at = time.monotonic()

    def idle_for(self) -> float | None:
        """Seconds since the last call ended; None while a call or a batch runs."""
        running = self.service is not None and any(not t.done() for t in self.service.runner.tasks.values())
        return None if self._calls or running else time.monotonic() - self._active_at

    def _idle_long_enough(self) -> bool:
        limit = self.config.driver_idle_exit_s  # 0: the driver stays
        idle = self.idle_for()
        return limit > 0 and idle is not None and idle >= limit

    async def _exit_when_idle(self) -> None:
        while True:
            await asyncio.sleep(min(self.config.driver_idle_exit_s, IDLE_CHECK_S))
            if self._idle_long_enough():
                self._request_exit()

    def _request_exit(self) -> None:
        """Ray's ``exit_actor`` works only inside one of the actor's methods: call one."""
        ray.get_runtime_context().current_actor.exit_if_idle.remote()

    async def exit_if_idle(self) -> bool:
        """Exit if still idle (checked again here: a call may have come since); False if not."""
        if not self._idle_long_enough():
            return False
        logger.info("Batch driver: no batch running and no call for %.0f s: exiting; the next Files or "
                    "Batches request starts it again", self.config.driver_idle_exit_s)
        self._exiting.set()  # the fronts' lifelines return (they end before the actor does)
        ray.actor.exit_actor()

    async def lifeline(self) -> None:
        """Returns when this driver exits because it is idle (each front holds one open)."""
        await self._exiting.wait()

    def online_seen(self, at: float) -> None:
        """A front replica began serving online traffic at ``at``: batch lines yield to it."""
        if self.service is not None:
            self.service.online_seen(at)


class RayBatchService:
    """The actor behind the service interface the routes use (``await service.method(...)``)."""

    def __init__(self, app_name: str, config: BatchConfig) -> None:
        self.app_name, self.config = app_name, config
        self._actor = None
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task] = set()  # lifelines and hints in flight (the loop keeps only weak references)

    def _get_or_create(self):
        head = {"node:__internal_head__": 0.001}
        return (
            ray.remote(BatchDriverActor)
            .options(name=f"batch-driver-{self.app_name}", namespace=SERVE_NAMESPACE, get_if_exists=True,
                     num_cpus=0, max_restarts=-1, max_task_retries=0, resources=head, max_concurrency=1000)
            .remote(self.app_name, self.config)
        )

    async def connect(self, failed=None):
        """The driver, started. After a call to the driver whose actor id is ``failed`` raised,
        the handle held is kept and waited on: Ray restarts the actor behind it, and only the
        handle its creator got keeps a (non-detached) actor alive, so swapping it for a looked-up
        one would destroy it. A driver dead for good is made anew; it resumes unfinished batches
        from the store. (An id, not the handle: a handle still held keeps a dead actor's name.)"""
        async with self._lock:
            if self._actor is not None and failed is not None and self._actor._actor_id == failed:
                try:
                    await asyncio.wait_for(self._actor.start.remote(), START_TIMEOUT_S)
                    return self._actor
                except ray.exceptions.RayActorError:
                    self._actor = None
            if self._actor is None:
                for attempt in range(NAME_TRIES):
                    actor = await asyncio.to_thread(self._get_or_create)
                    try:
                        await asyncio.wait_for(actor.start.remote(), START_TIMEOUT_S)
                        break
                    except ray.exceptions.ActorDiedError:  # one that exited (idle), its name not free yet
                        del actor
                        if attempt == NAME_TRIES - 1:
                            raise
                        await asyncio.sleep(0.5)
                self._actor = actor
                self._background(self._hold_lifeline(actor))
        return self._actor

    def _background(self, coroutine) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _hold_lifeline(self, actor) -> None:
        """Hold a ``lifeline`` call open on the driver; when it exits (idle), let go of it. A
        driver that crashed and restarts is waited for (its restart resumes the batches), and held
        on to: only its creator's handle keeps it alive."""
        while self._actor is actor:
            try:
                await actor.lifeline.remote()
                break  # it exited
            except ray.exceptions.RayActorError:
                try:
                    await asyncio.wait_for(actor.start.remote(), START_TIMEOUT_S)
                except Exception:  # noqa: BLE001 - dead for good
                    break
            except Exception:  # noqa: BLE001 - cancelled (the replica stops), or unforeseen: stop holding
                return
        if self._actor is actor:
            self._actor = None

    def online_seen_soon(self, at: float) -> None:
        """Tell the driver, without waiting, that online traffic was served at ``at`` (no driver
        connected yet: nothing to tell; the batch answers carry it too)."""
        actor = self._actor
        if actor is not None:
            try:
                ref = actor.online_seen.remote(at)
                self._background(self._hint_sent(ref))
            except Exception:  # noqa: BLE001 - a hint: the batch answers carry it as well
                pass

    @staticmethod
    async def _hint_sent(ref) -> None:
        """Read a hint's answer, so that a hint to a driver that has just exited (before its
        lifeline let go of it) or is restarting leaves no unread error in Ray's log."""
        try:
            await ref
        except Exception:  # noqa: BLE001 - the lifeline and the next call deal with the driver
            pass

    def __getattr__(self, method: str):
        if method.startswith("_"):
            raise AttributeError(method)

        async def call(*args: Any) -> Any:
            actor = await self.connect()
            try:
                return await actor.call.remote(method, *args)
            except ray.exceptions.RayActorError:  # restarted by Ray, or gone: the new one resumes from the store
                failed = actor._actor_id
            del actor  # (outside the except, whose traceback holds this frame)
            return await (await self.connect(failed=failed)).call.remote(method, *args)

        return call
