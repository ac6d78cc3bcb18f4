"""A small deterministic engine for fast tests of everything above the engine.

It "generates" a fixed script, byte by byte, through :class:`ByteTokenizer`: the text given as
``script`` (default: the prompt's last line, or last user message, reversed; then EOS). It honours max_tokens,
stop_token_ids, ignore_eos and abort, and counts the requests it is running, so tests can see
cancellation. It is never used for real traffic.
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

from deployments.engines.base import Engine, EngineInfo, GenerationChunk, LoRARef, SamplingParams
from deployments.engines.tokenizer import ByteTokenizer


class FakeEngine(Engine):
    structured_outputs = False  # it replays a script; it cannot follow a JSON schema

    def __init__(self, script: str | None = None, step_delay: float = 0.0, max_model_len: int = 512) -> None:
        self.tokenizer = ByteTokenizer()
        self.script = script
        self.step_delay = step_delay
        self.max_model_len = max_model_len
        self.running: set[str] = set()
        self.aborted: list[str] = []
        self.healthy = True
        self.peak_running = 0

    async def start(self) -> None:
        pass

    async def check_health(self) -> None:
        if not self.healthy:
            raise RuntimeError("fake engine marked unhealthy")

    def info(self) -> EngineInfo:
        return EngineInfo(engine="fake", reason="tests", max_model_len=self.max_model_len, dtype="none")

    def stats(self) -> dict[str, int]:
        return {"running": len(self.running), "waiting": 0, "peak_running": self.peak_running}

    def _script(self, prompt: list[int]) -> list[int]:
        if self.script is not None:
            return self.tokenizer.encode(self.script)
        lines = [line for line in self.tokenizer.decode(prompt).split("\n") if line and line != "assistant: "]
        last = lines[-1].removeprefix("user: ") if lines else ""
        return self.tokenizer.encode(last[::-1] or "ok")

    async def generate(
        self, request_id: str, prompt_token_ids: list[int], params: SamplingParams, lora: LoRARef | None = None
    ) -> AsyncIterator[GenerationChunk]:
        script = self._script(prompt_token_ids)
        if lora is not None:  # an "adapter" that answers in capitals, so tests can tell
            script = self.tokenizer.encode(self.tokenizer.decode(script).upper())
        self.running.add(request_id)
        self.peak_running = max(self.peak_running, len(self.running))
        finished = False
        try:
            produced = 0
            while True:
                if self.step_delay:
                    await asyncio.sleep(self.step_delay)
                else:
                    await asyncio.sleep(0)
                token = script[produced % len(script)] if (produced < len(script) or params.ignore_eos) else ByteTokenizer.EOS
                produced += 1
                finish = None
                if token in params.stop_token_ids or token == ByteTokenizer.EOS:
                    finish = "stop"
                elif produced >= params.max_tokens:
                    finish = "length"
                finished = finish is not None
                yield GenerationChunk([token], None, finish)
                if finished:
                    return
        finally:
            self.running.discard(request_id)
            if not finished:
                self.aborted.append(request_id)
