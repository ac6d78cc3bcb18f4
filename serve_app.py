"""The application builder: ``import_path: serve_app:build_app`` in ``serve_config.yaml``.

``args`` are validated against :class:`deployments.config.AppConfig` before any replica is
scheduled (an invalid config fails ``serve run`` with the field's path). Each model becomes a
deployment of its own, named ``llm-<id>`` or ``embed-<id>``, bound into one ingress.
"""

from __future__ import annotations

from ray.serve import Application

from deployments.config import AppConfig, embedding_deployment_name, llm_deployment_name
from deployments.deployment import EmbeddingDeployment, Ingress, LLMDeployment


def build_app(args: AppConfig) -> Application:
    config = args if isinstance(args, AppConfig) else AppConfig.model_validate(args)
    llms = {m.id: LLMDeployment.options(name=llm_deployment_name(m.id)).bind(m) for m in config.llms}
    embeddings = {
        m.id: EmbeddingDeployment.options(name=embedding_deployment_name(m.id)).bind(m) for m in config.embeddings
    }
    aliases = {m.id: list(m.aliases) for m in [*config.llms, *config.embeddings]}
    names = {m.id: llm_deployment_name(m.id) for m in config.llms}
    names |= {m.id: embedding_deployment_name(m.id) for m in config.embeddings}
    return Ingress.bind(llms, embeddings, aliases, names, config.server)
