"""Ray Serve deployments of the models that run apart from the front (``colocated: false``).

The classes they wrap hold all the logic and import no Ray: ``LLMServer`` and
``EmbeddingServer``, ``AudioServer``. The front is ``deployments/ingress.py``. Options here are defaults; the
model's inline ``deployment:`` options and ``serve_config.yaml``'s ``deployments:`` section
override them.
"""

from __future__ import annotations

from ray import serve

from deployments.audio_server import AudioServer
from deployments.embedding_server import EmbeddingServer
from deployments.llm_server import LLMServer


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

AudioDeployment = serve.deployment(
    AudioServer,
    name="AudioServer",
    max_ongoing_requests=16,
    ray_actor_options={"num_cpus": 0.5},
)
