"""The LLM model server: OpenAI chat and legacy completions on top of one :class:`Engine`.

This class is the body of each LLM deployment (``deployments/deployment.py`` wraps it for Ray
Serve), of each model a front hosts in-process (``deployments/ingress.py``), and runs in-process
in the fast tests. Its public methods are the seam the front calls, over a handle or directly.
The work is in ``deployments/llm``: a generation core (engine, sampling, choices, stop strings,
the one stream writer) with a chat half and a completions half over it. Streams leave here
already formatted as SSE text, several events per message, so the hops behind it carry few,
small messages.
"""

from __future__ import annotations

import logging
import time
from contextlib import aclosing
from typing import Any, AsyncIterator

from deployments import protocol
from deployments.config import LLMConfig
from deployments.engines.base import Engine
from deployments.llm.chat import ChatHalf
from deployments.llm.completions import CompletionHalf
from deployments.llm.core import GenerationCore
from deployments.protocol import ChatCompletionRequest, CompletionRequest

logger = logging.getLogger("ray.serve")


def _stream_of(half: str, method: str):
    """A streaming method that relays ``self.<half>.<method>(req)``: SSE text messages. It is an
    async generator function itself, which is how Ray Serve (and the in-process handle) know
    to stream it; closing it closes the half's stream, which aborts the engine's requests."""

    async def relay(self, req) -> AsyncIterator[str]:
        async with aclosing(getattr(getattr(self, half), method)(req)) as messages:
            async for message in messages:
                yield message

    relay.__name__ = relay.__qualname__ = method
    return relay


class LLMServer:
    """Serves one model on the engine its config picks (or ``engine``, already built, in tests)."""

    async def __init__(self, config: LLMConfig, engine: Engine | None = None) -> None:
        started = time.monotonic()
        if engine is None:
            from deployments.engines import start_engine

            engine = await start_engine(config)
        else:
            await engine.start()
        self.config = config
        self.engine = engine
        self.core = GenerationCore(config, engine)
        self.chats = ChatHalf(self.core)
        self.completions = CompletionHalf(self.core)
        self.created = int(time.time())
        logger.info("Model %s ready on engine %s in %.1f s", config.id, engine.info().engine, time.monotonic() - started)

    # ------------------------------------------------------------------ metadata / health
    def info(self) -> dict[str, Any]:
        info = self.engine.info()
        return {
            "id": self.config.id,
            "created": self.created,
            "owned_by": self.config.owned_by,
            "aliases": self.config.aliases,
            "capabilities": ["chat.completions", "completions", "tools", "tokenize"]
            + (["tool_choice.required", "response_format.json_schema"] if self.engine.structured_outputs else []),
            "context_length": info.max_model_len,
            "engine": info.engine,
            "engine_reason": info.reason,
            "dtype": info.dtype,
            "lora_adapters": [f"{self.config.id}:{a.name}" for a in self.config.lora_adapters],
            **info.extra,
        }

    async def stats(self) -> dict[str, int]:
        """Engine load (running, waiting, peak_running; kv_cache_usage where the engine reports it);
        raises if the engine is unhealthy."""
        await self.engine.check_health()
        return self.engine.stats()

    async def check_health(self) -> None:
        """Called by Ray Serve periodically; a raise gets the replica replaced."""
        await self.engine.check_health()

    async def shutdown(self) -> None:
        """Stop the engine and release the model (idempotent)."""
        engine, self.engine = getattr(self, "engine", None), None
        if engine is not None:
            logger.info("Stopping the %s engine of %s", engine.info().engine, self.config.id)
            await engine.shutdown()

    # ------------------------------------------------------------------ the APIs
    async def chat(self, req: ChatCompletionRequest) -> dict[str, Any]:
        return await self.chats.chat(req)

    async def completion(self, req: CompletionRequest) -> dict[str, Any]:
        return await self.completions.completion(req)

    chat_stream = _stream_of("chats", "chat_stream")
    completion_stream = _stream_of("completions", "completion_stream")

    async def tokenize(self, req: protocol.TokenizeRequest) -> dict[str, Any]:
        tokenizer = self.core.tokenizer
        ids = tokenizer.encode(req.prompt) if req.prompt is not None else self.chats.render(req.messages, req.tool_dicts or None)
        out: dict[str, Any] = {"count": len(ids), "max_model_len": self.core.max_model_len, "tokens": ids}
        if req.return_token_strs:
            out["token_strs"] = [tokenizer.token_text(t) for t in ids]
        return out

    async def detokenize(self, req: protocol.DetokenizeRequest) -> dict[str, Any]:
        self.core.check_token_ids(req.tokens, "Token ids", "tokens")
        return {"prompt": self.core.tokenizer.decode(req.tokens)}
