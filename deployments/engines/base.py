"""The one engine interface every LLM backend implements.

An engine turns prompt token ids into generated token ids, step by step, for many requests at
once. It knows nothing of HTTP, chat templates, stop *strings* or the OpenAI protocol: the model
server (``deployments/llm_server.py``) does detokenisation and stop strings once, for all engines,
so both engines share one definition of them.

Closing the async iterator returned by :meth:`Engine.generate` (``aclose()``, or the consumer being
cancelled) aborts the request inside the engine and frees its batch slot.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

from deployments.engines.errors import InvalidRequest

__all__ = ["Engine", "EngineInfo", "EngineOptions", "GenerationChunk", "InvalidRequest", "LoRARef", "SamplingParams", "TokenLogprob"]


@dataclass
class SamplingParams:
    """OpenAI sampling semantics, in engine terms (token ids, not strings)."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1: off
    min_p: float = 0.0
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    min_tokens: int = 0
    logprobs: int | None = None  # None: none; k >= 0: the chosen token plus the k likeliest
    # Structured output: every sampled token keeps the text a valid prefix of a JSON document
    # matching this JSON schema (compact, no free whitespace); None: unconstrained.
    json_schema: dict[str, Any] | None = None


@dataclass
class TokenLogprob:
    token_id: int
    logprob: float
    top: list[tuple[int, float]]  # (token id, logprob), likeliest first


@dataclass
class GenerationChunk:
    """New tokens of one request since the previous chunk."""

    token_ids: list[int]
    logprobs: list[TokenLogprob] | None = None
    finish_reason: str | None = None  # "stop" (EOS or stop token) | "length" | None


@dataclass(frozen=True)
class LoRARef:
    """A LoRA adapter to apply to one request: its name and the folder of its weights."""

    name: str
    path: str


@dataclass(frozen=True)
class EngineOptions:
    """How to run one model, whichever engine runs it: the one set of constructor arguments
    (``deployments/engines/__init__.py`` builds it from the model's config). An engine reads the
    fields that apply to it and ignores the others' (``torch_threads`` is the transformers
    engine's; ``engine_args``, ``env`` and ``lora`` are vLLM's)."""

    model_path: str
    dtype: str = "bfloat16"
    max_model_len: int | None = None
    max_batch_size: int = 32
    reason: str = "configured"  # why this engine serves the model (shown in /v1/models/{id})
    torch_threads: int | None = None
    engine_args: dict[str, Any] = field(default_factory=dict)  # passed to vLLM's engine as they are
    env: dict[str, str] = field(default_factory=dict)  # set before vLLM's engine starts
    lora: tuple[int, int] | None = None  # (max rank, max adapters per batch) when there are adapters

    def info(self, engine: str, max_model_len: int | None, **extra: Any) -> "EngineInfo":
        """What an engine of these options reports, with its own ``extra`` facts."""
        return EngineInfo(engine, self.reason, max_model_len or 0, self.dtype, {"max_batch_size": self.max_batch_size, **extra})


@dataclass
class EngineInfo:
    """What an engine reports about itself (shown in ``/v1/models/{id}``)."""

    engine: str
    reason: str
    max_model_len: int
    dtype: str
    extra: dict[str, Any] = field(default_factory=dict)


class Engine(abc.ABC):
    """A generation backend. Create it, ``await start()``, then ``generate`` concurrently."""

    #: whether ``SamplingParams.json_schema`` is enforced (engines that cannot must say so)
    structured_outputs: bool = True

    @abc.abstractmethod
    async def start(self) -> None:
        """Load the model; raise if it cannot be served here."""

    @abc.abstractmethod
    def generate(
        self, request_id: str, prompt_token_ids: list[int], params: SamplingParams, lora: LoRARef | None = None
    ) -> AsyncIterator[GenerationChunk]:
        """Stream the request's new tokens; the last chunk has a ``finish_reason``. With ``lora``,
        the adapter is loaded on first use, kept, and applied to this request only."""

    def check_structured(self, schema: dict[str, Any]) -> None:
        """Raise :class:`InvalidRequest` if ``schema`` cannot constrain this engine's output.

        Both real engines compile schemas with xgrammar, so one check (no vocabulary involved)
        serves them; it is imported here only when needed, since it brings torch."""
        if not self.structured_outputs:
            raise InvalidRequest(f"The {self.info().engine} engine cannot constrain output to a JSON schema.", "response_format")
        from deployments.engines.grammar import check_schema

        check_schema(schema)

    @abc.abstractmethod
    async def check_health(self) -> None:
        """Raise if the engine can no longer serve (Ray Serve then replaces the replica)."""

    @abc.abstractmethod
    def info(self) -> EngineInfo:
        """Engine name, why it was chosen, context length, dtype."""

    def stats(self) -> dict[str, int]:
        """Requests ``running`` and ``waiting`` inside the engine, and ``peak_running`` (the
        largest number decoded together so far)."""
        return {"running": 0, "waiting": 0, "peak_running": 0}

    async def shutdown(self) -> None:
        """Release the model."""
