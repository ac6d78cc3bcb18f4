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
"""

from __future__ import annotations

import asyncio
from typing import Any

import ray

from deployments.config import BatchConfig

SERVE_NAMESPACE = "serve"
START_TIMEOUT_S = 120.0


class BatchDriverActor:
    def __init__(self, app_name: str, config: BatchConfig, front: str = "Ingress") -> None:
        self.app_name, self.config, self.front = app_name, config, front
        self.service = None
        self._handle = None

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
        if self.service is None:
            from deployments.batch.service import BatchService

            self.service = BatchService(self.config, self._execute)
            await self.service.start()
        return True

    async def call(self, method: str, *args: Any) -> Any:
        await self.start()
        return await getattr(self.service, method)(*args)

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

    def _get_or_create(self):
        head = {"node:__internal_head__": 0.001}
        return (
            ray.remote(BatchDriverActor)
            .options(name=f"batch-driver-{self.app_name}", namespace=SERVE_NAMESPACE, get_if_exists=True,
                     num_cpus=0, max_restarts=-1, max_task_retries=0, resources=head, max_concurrency=1000)
            .remote(self.app_name, self.config)
        )

    async def connect(self, failed=None):
        """The driver, started. After a call to ``failed`` raised, the handle held is kept and
        waited on: Ray restarts the actor behind it, and only the handle its creator got keeps a
        (non-detached) actor alive, so swapping it for a looked-up one would destroy it. A
        driver dead for good is made anew; it resumes unfinished batches from the store."""
        async with self._lock:
            if self._actor is not None and self._actor is failed:
                try:
                    await asyncio.wait_for(self._actor.start.remote(), START_TIMEOUT_S)
                    return self._actor
                except ray.exceptions.RayActorError:
                    self._actor = None
            if self._actor is None:
                actor = await asyncio.to_thread(self._get_or_create)
                await asyncio.wait_for(actor.start.remote(), START_TIMEOUT_S)
                self._actor = actor
        return self._actor

    def online_seen_soon(self, at: float) -> None:
        """Tell the driver, without waiting, that online traffic was served at ``at`` (no driver
        connected yet: nothing to tell; the batch answers carry it too)."""
        if self._actor is not None:
            try:
                self._actor.online_seen.remote(at)
            except Exception:  # noqa: BLE001 - a hint: the batch answers carry it as well
                pass

    def __getattr__(self, method: str):
        if method.startswith("_"):
            raise AttributeError(method)

        async def call(*args: Any) -> Any:
            actor = await self.connect()
            try:
                return await actor.call.remote(method, *args)
            except ray.exceptions.RayActorError:  # restarted by Ray, or gone: the new one resumes from the store
                actor = await self.connect(failed=actor)
                return await actor.call.remote(method, *args)

        return call
