"""Engines and the one place that chooses between them."""

from __future__ import annotations

import asyncio
import logging

from deployments.config import LLMConfig
from deployments.engines.base import Engine, EngineOptions

logger = logging.getLogger("ray.serve")


class EngineUnavailable(RuntimeError):
    """The configured engine cannot serve this model on this machine."""


async def start_engine(config: LLMConfig) -> Engine:
    """Create and start the engine the config asks for; ``auto`` falls back to transformers."""
    from deployments import loading, model_store

    _start_early([config])
    # a GGUF source is de-quantised once, which takes a while: off the event loop
    path = await loading.exclusive(model_store.resolve, config.source, config.dtype)
    logger.info("Model %s: loading %s", config.id, model_store.describe(path))
    if _may_use_vllm(config):
        from deployments.engines.vllm_engine import vllm_unavailable_reason

        why_not = await loading.exclusive(vllm_unavailable_reason)  # imports vllm: seconds, off the loop
        if why_not is None:
            reason = "engine: vllm in the config" if config.engine == "vllm" else "auto: vLLM imports and started here"
            engine = _vllm(config, path, reason)
            try:
                await engine.start()
                logger.info("Model %s: engine vllm (%s)", config.id, reason)
                return engine
            except Exception as exc:  # noqa: BLE001 - reported below, or the fallback's reason
                await _quietly_shutdown(engine)
                why_not = f"vLLM failed to start: {exc!r}"
        if config.engine == "vllm":
            raise EngineUnavailable(f"Model {config.id}: engine: vllm was asked for, but {why_not}")
        reason = f"auto: fell back to transformers because {why_not}"
    else:
        reason = "engine: hf in the config"
    engine = _hf(config, path, reason)
    await engine.start()
    logger.info("Model %s: engine hf (%s)", config.id, reason)
    return engine


async def import_engines(configs: list[LLMConfig]) -> None:
    """Import the engine these configs may start (vLLM, for ``vllm`` or ``auto``) in a thread,
    ahead of :func:`start_engine`, which then finds the answer kept."""
    if any(_may_use_vllm(c) for c in configs):
        from deployments import loading
        from deployments.engines.vllm_engine import vllm_unavailable_reason

        _start_early(configs)

        await loading.exclusive(vllm_unavailable_reason)


def _start_early(configs: list[LLMConfig]) -> None:
    """Start the first vLLM model's engine fork server before vLLM's import where an earlier start
    kept what that needs (``vllm_engine.start_fork_server_early``; once a process)."""
    for config in configs:
        if _may_use_vllm(config):
            from deployments.engines.vllm_engine import start_fork_server_early

            start_fork_server_early(dict(config.engine_args or {}), dict(config.vllm_env or {}))
            return


def _may_use_vllm(config: LLMConfig) -> bool:
    return config.engine in ("vllm", "auto")


def _options(config: LLMConfig, path: str, reason: str) -> EngineOptions:
    """The model's config in the engines' one set of arguments."""
    return EngineOptions(
        model_path=path,
        dtype=config.dtype,
        max_model_len=config.max_model_len,
        max_batch_size=config.max_batch_size,
        reason=reason,
        torch_threads=config.torch_threads,
        engine_args=dict(config.engine_args or {}),
        env=dict(config.vllm_env or {}),
        lora=(config.max_lora_rank, config.max_loras) if config.lora_adapters else None,
    )


def _hf(config: LLMConfig, path: str, reason: str) -> Engine:
    from deployments.engines.hf import HFEngine

    return HFEngine(_options(config, path, reason))


def _vllm(config: LLMConfig, path: str, reason: str) -> Engine:
    from deployments.engines.vllm_engine import VLLMEngine

    return VLLMEngine(_options(config, path, reason))


async def _quietly_shutdown(engine: Engine) -> None:
    try:
        await engine.shutdown()
    except Exception:  # noqa: BLE001 - it failed to start; nothing more to report
        pass
