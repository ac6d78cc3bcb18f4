"""Ray Serve deployments: the three kinds of replica, and nothing else.

The classes they wrap hold all the logic and import no Ray (except ``@serve.batch`` in the
embedding server): ``LLMServer``, ``EmbeddingServer`` and the FastAPI app of ``api.py``.
Options here are defaults; ``serve_config.yaml``'s ``deployments:`` section overrides them.
"""

from __future__ import annotations

import asyncio
import logging

from ray import serve

from deployments.api import EMBEDDING, LLM, ModelRoute, Router, create_app
from deployments.auth import KeyStore
from deployments.config import ServerConfig
from deployments.embedding_server import EmbeddingServer
from deployments.llm_server import LLMServer

logger = logging.getLogger("ray.serve")

# Serve's replica states on the way to RUNNING
STARTING_STATES = ("STARTING", "UPDATING", "RECOVERING", "PENDING_MIGRATION")


class LLMReplica(LLMServer):
    """An LLM server as a Ray replica: its engine stops with it.

    Serve calls ``__del__`` when it stops a replica gracefully (scale-down, redeploy, ``serve
    shutdown``, Ctrl-C on ``serve run``). vLLM's engine runs in child processes (~4.5 GB for the
    default model) that would otherwise outlive the replica.
    """

    async def __del__(self) -> None:
        await self.shutdown()


LLMDeployment = serve.deployment(
    LLMReplica,
    name="LLMServer",
    max_ongoing_requests=64,
    ray_actor_options={"num_cpus": 1},
    health_check_period_s=10,
    health_check_timeout_s=30,
)

EmbeddingDeployment = serve.deployment(
    EmbeddingServer,
    name="EmbeddingServer",
    max_ongoing_requests=128,
    ray_actor_options={"num_cpus": 0.5},
)


@serve.deployment(name="Ingress", max_ongoing_requests=1024, ray_actor_options={"num_cpus": 0.25})
@serve.ingress()
class Ingress:
    """The FastAPI front: OpenAI routes, routing by ``model`` to the model deployments."""

    async def __init__(
        self, llms: dict, embeddings: dict, aliases: dict[str, list[str]], deployments: dict[str, str], server: ServerConfig
    ) -> None:
        # Not ready until Serve reports a running replica (the watcher below, within a second).
        routes = [ModelRoute(mid, LLM, handle, aliases.get(mid, []), ready=False) for mid, handle in llms.items()]
        routes += [
            ModelRoute(mid, EMBEDDING, handle, aliases.get(mid, []), ready=False) for mid, handle in embeddings.items()
        ]
        self.router = Router(routes)
        self.server = server
        self.keys = KeyStore.from_env()
        self.deployments = deployments  # model id -> deployment name
        self.app_name = serve.get_replica_context().app_name
        self._watch = asyncio.create_task(self._watch_replicas())
        logger.info("Ingress routes: %s", ", ".join(r.id for r in routes))

    def __serve_build_asgi_app__(self):
        return create_app(self.router, self.keys, self.server)

    async def _watch_replicas(self) -> None:
        """Mark each model ready while its deployment has a running replica, from Serve's status.

        Requests for a model with none (loading, or replaced after a crash) get a prompt 503
        with Retry-After instead of waiting in a queue for a replica that may take a minute.
        """
        while True:
            try:
                status = await asyncio.to_thread(serve.status)
                app = status.applications.get(self.app_name)
                for route in self.router.routes:
                    deployment = app.deployments.get(self.deployments[route.id]) if app else None
                    replicas = deployment.replica_states if deployment else {}
                    running = replicas.get("RUNNING", 0) > 0
                    # not deployed yet, or a replica on its way up: loading; else unavailable
                    loading = deployment is None or any(replicas.get(s, 0) for s in STARTING_STATES)
                    if running != route.ready or (not running and loading != route.loading):
                        state = "ready" if running else "loading" if loading else "unavailable (no replica running or starting)"
                        logger.info("Model %s is %s", route.id, state)
                    route.ready, route.loading = running, loading
            except Exception as exc:  # noqa: BLE001 - keep the last known state, try again
                logger.warning("Could not read Serve status: %r", exc)
            await asyncio.sleep(self.server.status_poll_s)
