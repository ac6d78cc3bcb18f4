"""Engines and the one place that chooses between them."""

from __future__ import annotations

from deployments.config import LLMConfig
from deployments.engines.base import Engine


def create_engine(config: LLMConfig) -> Engine:
    """The engine a model's config asks for, loading from its resolved source."""
    from deployments import model_store

    path = model_store.resolve(config.source, config.dtype)
    if config.engine == "hf":
        from deployments.engines.hf import HFEngine

        return HFEngine(
            path,
            dtype=config.dtype,
            max_model_len=config.max_model_len,
            max_batch_size=config.max_batch_size,
            torch_threads=config.torch_threads,
            reason="engine: hf in the config",
        )
    raise ValueError(f"unknown engine {config.engine!r}")
