"""The application builder: ``import_path: serve_app:build_app`` in ``serve_config.yaml``.

``args`` are validated against :class:`deployments.config.AppConfig` before any replica is
scheduled (an invalid config fails ``serve run`` with the field's path). A
co-located model is built inside the front's replicas (the fast path); every other model
becomes a deployment of its own, named ``llm-<id>``, ``embed-<id>`` or ``audio-<id>``, bound into
the front.
"""

from __future__ import annotations

from ray.serve import Application

from deployments.config import AppConfig, audio_deployment_name, embedding_deployment_name, llm_deployment_name
from deployments.deployment import AudioDeployment, EmbeddingDeployment, LLMDeployment
from deployments.ingress import Ingress


def build_app(args: AppConfig) -> Application:
    config = args if isinstance(args, AppConfig) else AppConfig.model_validate(args)
    check_resources(config)
    llms = {
        m.id: LLMDeployment.options(name=llm_deployment_name(m.id), **m.deployment.as_options()).bind(m)
        for m in config.llms
        if not m.colocated
    }
    embeddings = {
        m.id: EmbeddingDeployment.options(name=embedding_deployment_name(m.id), **m.deployment.as_options()).bind(m)
        for m in config.embeddings
        if not m.colocated
    }
    audio = {
        m.id: AudioDeployment.options(name=audio_deployment_name(m.id), **m.deployment.as_options()).bind(m)
        for m in config.audio
        if not m.colocated
    }
    return Ingress.bind(config, llms, embeddings, audio)


def check_resources(config: AppConfig) -> None:
    """Fail before scheduling when a replica asks for more than any node of the cluster has.

    Runs where Ray is already up (``serve run`` / ``serve deploy`` build the app inside the
    cluster); otherwise there is nothing to check against yet.
    """
    import ray

    if not ray.is_initialized():
        return
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    if not nodes:
        return
    for kind, models in config.model_kinds():
        for i, model in enumerate(models):
            if model.colocated:
                continue  # it runs in the front's replicas, which Ray sizes and checks
            options = model.deployment.ray_actor_options or {}
            wanted = {"CPU": options.get("num_cpus", 0), "GPU": options.get("num_gpus", 0), **options.get("resources", {})}
            wanted = {k: v for k, v in wanted.items() if v}
            if wanted and not any(all(node.get(k, 0) >= v for k, v in wanted.items()) for node in nodes):
                raise ValueError(
                    f"{kind}[{i}].deployment.ray_actor_options: no node of this cluster has {wanted} "
                    f"(nodes have: {[{k: v for k, v in n.items() if not k.startswith(('node:', 'memory', 'object_store'))} for n in nodes]})"
                )
