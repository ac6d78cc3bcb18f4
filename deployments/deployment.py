"""Ray Serve deployments: the three kinds of replica, and nothing else.

The classes they wrap hold all the logic and import no Ray (except ``@serve.batch`` in the
embedding server): ``LLMServer``, ``EmbeddingServer`` and the FastAPI app of ``api.py``.
Options here are defaults; ``serve_config.yaml``'s ``deployments:`` section overrides them.
"""

from __future__ import annotations

import logging

from ray import serve

from deployments.api import EMBEDDING, LLM, ModelRoute, Router, create_app
from deployments.embedding_server import EmbeddingServer
from deployments.llm_server import LLMServer

logger = logging.getLogger("ray.serve")

LLMDeployment = serve.deployment(
    LLMServer,
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


@serve.deployment(name="Ingress", max_ongoing_requests=512, ray_actor_options={"num_cpus": 0.25})
@serve.ingress()
class Ingress:
    """The FastAPI front: OpenAI routes, routing by ``model`` to the model deployments."""

    def __init__(self, llms: dict, embeddings: dict, aliases: dict[str, list[str]]) -> None:
        routes = [ModelRoute(mid, LLM, handle, aliases.get(mid, [])) for mid, handle in llms.items()]
        routes += [ModelRoute(mid, EMBEDDING, handle, aliases.get(mid, [])) for mid, handle in embeddings.items()]
        self.router = Router(routes)
        logger.info("Ingress routes: %s", ", ".join(r.id for r in routes))

    def __serve_build_asgi_app__(self):
        return create_app(self.router)
