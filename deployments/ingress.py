"""The front: the FastAPI ingress deployment holding the OpenAI routes, routing by ``model``.

Each model is reached through a handle with one interface (``handle.method.remote(...)``):

* **co-located** (``colocated: true``): its model server is built inside each front replica and
  called in-process (``deployments/inprocess.py``). With the serving environment of
  ``configs/serving.env`` (HAProxy direct ingress, user code on the replica's loop), a token goes
  from the engine to the client's socket with no Python process in between that only relays.
* **separate**: its own deployment (``llm-<id>`` / ``embed-<id>`` / ``audio-<id>``) with its own replicas,
  resources and nodes, reached through a Ray Serve deployment handle.

This module imports no engine code: a co-located model's server module is imported when the
replica builds it.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from ray import serve

from deployments import background_cpu, serving_env
from deployments.api import create_app
from deployments.routing import AUDIO, EMBEDDING, LLM, ModelRoute, Router
from deployments.auth import KeyStore
from deployments.config import AppConfig, AudioConfig, EmbeddingConfig, LLMConfig
from deployments.inprocess import Admission, LocalModel, construct
from deployments.ratelimit import ReplicaLimiter
from deployments.ratelimit_ray import RayAuthority

logger = logging.getLogger("ray.serve")

# Serve's defaults for a model deployment (deployments/deployment.py), kept for a co-located model
DEFAULT_MAX_ONGOING = {LLM: 64, EMBEDDING: 128, AUDIO: 16}


@serve.deployment(name="Ingress", max_ongoing_requests=1024, ray_actor_options={"num_cpus": 0.25})
@serve.ingress()
class Ingress:
    """OpenAI routes over co-located model servers and handles of separate model deployments.

    The replica answers as soon as its routes exist; co-located models load in the background
    meanwhile (a request for one answers 503 with Retry-After, and ``/health`` says ``loading``,
    until it is ready), as a separate deployment's model does while its replica starts.
    """

    async def __init__(
        self, config: AppConfig, llms: dict[str, Any], embeddings: dict[str, Any], audio: dict[str, Any] | None = None
    ) -> None:
        models = [*config.llms, *config.embeddings, *config.audio]
        colocated = [m for m in models if m.colocated]
        batch = serving_env.batch_scheduled()
        logger.info(serving_env.startup_line([m.id for m in colocated], batch=batch))
        for warning in serving_env.missing_settings(bool(colocated), batch=batch):
            logger.warning(warning)
        retry = config.server.retry_after_s
        self.local: dict[str, LocalModel] = {}
        routes = []
        handles = {LLM: llms, EMBEDDING: embeddings, AUDIO: audio or {}}
        for model in models:
            kind = _kind(model)
            aliases = [n for n in model.names if n != model.id]
            if model.colocated:
                limits = model.deployment
                local = self.local[model.id] = LocalModel(
                    Admission(
                        limits.max_ongoing_requests or DEFAULT_MAX_ONGOING[kind],
                        -1 if limits.max_queued_requests is None else limits.max_queued_requests,
                        retry,
                    )
                )
                routes.append(ModelRoute(model.id, kind, local.handle(), aliases, replicas=local.replicas))
            else:
                handle = handles[kind][model.id]
                routes.append(ModelRoute(model.id, kind, handle, aliases, replicas=_routable_replicas(handle)))
        self.router = Router(routes)
        self.server = config.server
        self.keys = KeyStore.from_env()
        self.limiter = None
        if self.keys.limited:  # one ledger for the whole application, in a Ray actor
            self.limiter = ReplicaLimiter(RayAuthority(serve.get_replica_context().app_name))
            self.limiter.start()
        self._loading = asyncio.create_task(self._load(colocated)) if colocated else None
        self.batch = None
        self.online = None  # this replica's online traffic, set with its app (__serve_build_asgi_app__)
        if config.batch.enabled:  # the application's batch driver (a Ray actor); it resumes unfinished batches
            from deployments.batch.ray_driver import RayBatchService

            self.batch = RayBatchService(serve.get_replica_context().app_name, config.batch)
            self._batch_start = asyncio.create_task(self._start_batch_driver())
        self._background_cpu = None
        if config.server.ray_background_cpu == "idle" and background_cpu.supported():
            self._background_cpu = asyncio.create_task(self._idle_ray_background())
        logger.info("Ingress routes: %s", ", ".join(r.id for r in routes))

    def __serve_build_asgi_app__(self):
        app = create_app(self.router, self.keys, self.server, self.limiter, self.batch)
        self.online = app.state.serving.online  # the batch driver yields to the traffic it stamps
        if self.batch is not None:
            self.online.notify = self.batch.online_seen_soon
        return app

    async def _start_batch_driver(self) -> None:
        """Start (or find) the batch driver once this replica's models are loaded: its process
        would compete with their start for the CPU, and no batch line can run before them."""
        await self._models_settled()
        await self.batch.connect()

    async def _idle_ray_background(self) -> None:
        """Ray's processes that serve no request on this node under SCHED_IDLE, from when this
        replica's models are loaded (the controller then has the whole CPU while it deploys)."""
        await self._models_settled()
        await background_cpu.keep_idle(os.getppid())  # the replica's parent: this node's raylet

    async def _models_settled(self) -> None:
        """Returns once the co-located models have loaded, or failed to (at once without any)."""
        if self._loading is not None:
            await asyncio.gather(self._loading, return_exceptions=True)

    async def batch_lines(self, endpoint: str, bodies: list, models: list[str] | None) -> dict:
        """Batch lines through the online route's checks and model handles, one answer each (the
        batch driver calls it, with a chat line or a group of embedding lines): ``answers``, and
        ``online_at``, when this replica last served an online model request."""
        from deployments.batch.execute import execute_lines

        answers = await execute_lines(self.router, self.server, endpoint, bodies, models)
        return {"answers": answers, "online_at": self.online.last if self.online is not None else 0.0}

    async def _load(self, models: list[LLMConfig | EmbeddingConfig | AudioConfig]) -> None:
        """Build the co-located models' servers together (vLLM starts in its own processes while
        the embedding model loads in a thread); each serves as soon as it is built.

        One model loads in the process at a time (``deployments/loading.py``), chat models
        first: vLLM's import and its in-process start are the chat model's critical path, and
        the rest of vLLM's start (its engine processes, most of the time) leaves this process
        free, so the embedding models load then."""
        from deployments import loading
        from deployments.engines import import_engines

        llms = [m for m in models if isinstance(m, LLMConfig)]
        await import_engines(llms)

        async def build(model) -> None:
            if isinstance(model, LLMConfig):
                from deployments.llm_server import LLMServer as cls
            elif isinstance(model, AudioConfig):
                from deployments.audio_server import AudioServer as cls
            else:
                from deployments.embedding_server import EmbeddingServer as cls
            self.local[model.id].server = await construct(cls, model)
            logger.info("Model %s is ready", model.id)

        builds = [asyncio.create_task(build(m)) for m in llms]
        await loading.settled()
        builds += [asyncio.create_task(build(m)) for m in models if m not in llms]
        try:
            await asyncio.gather(*builds)
        finally:
            for task in builds:  # cancelled (the replica stops) or one failed: stop the rest
                task.cancel()
            await asyncio.gather(*builds, return_exceptions=True)

    async def check_health(self) -> None:
        """Ray Serve's periodic check: a co-located model that failed to load, or whose engine
        failed, fails this replica, and Serve replaces it (with every model co-located in it)."""
        if self._loading is not None and self._loading.done() and self._loading.exception() is not None:
            raise RuntimeError(f"a co-located model failed to load: {self._loading.exception()!r}")
        for local in self.local.values():
            if local.server is not None:
                await local.server.check_health()

    async def __del__(self) -> None:
        """Serve calls this on a graceful stop: co-located engines (vLLM's child processes) stop
        with the replica, also those still starting."""
        background = getattr(self, "_background_cpu", None)
        if background is not None:
            background.cancel()
        limiter = getattr(self, "limiter", None)
        if limiter is not None:
            await limiter.close()
        loading = getattr(self, "_loading", None)
        if loading is not None and not loading.done():
            loading.cancel()
            await asyncio.gather(loading, return_exceptions=True)
        for local in getattr(self, "local", {}).values():
            shutdown = getattr(local.server, "shutdown", None)
            if shutdown is not None:
                await shutdown()


def _kind(model) -> str:
    return LLM if isinstance(model, LLMConfig) else AUDIO if isinstance(model, AudioConfig) else EMBEDDING


def _routable_replicas(handle):
    """How many replicas ``handle`` can route to right now, as its router knows them.

    Serve's controller pushes each deployment's running replicas to every handle's router (its
    long poll); this reads that view, so a model counts as ready exactly when a request would
    find a replica, with no polling of ``serve.status()``. The attributes are Ray Serve 2.60's
    (``_private/router.py``: ``AsyncioRouter._request_router.curr_replicas``, or
    ``_running_replicas`` before the request router exists); requirements.txt pins that version.
    """

    def count() -> int:
        router = getattr(handle._router, "_asyncio_router", None)
        if router is None:
            return 0
        request_router = router._request_router
        if request_router is not None:
            return len(request_router.curr_replicas)
        return len(router._running_replicas or ())

    return count
