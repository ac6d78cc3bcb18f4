"""The legacy-completions half of the LLM model server, over the generation core: several
prompts per request, ``echo``, ``best_of`` and the legacy logprobs layout."""

from __future__ import annotations

import asyncio
from contextlib import aclosing
from typing import Any, AsyncIterator

from deployments import protocol
from deployments.engines.base import SamplingParams, TokenLogprob
from deployments.errors import invalid
from deployments.llm.core import ChoiceDelta, Collected, GenerationCore, Tally, merge
from deployments.protocol import CompletionRequest


class CompletionHalf:
    def __init__(self, core: GenerationCore) -> None:
        self.core = core

    async def completion(self, req: CompletionRequest) -> dict[str, Any]:
        rid, n, lora = protocol.new_id("cmpl"), req.n or 1, self.core.lora(req.model)
        candidates = max(req.best_of or n, n)
        prepared = [self._prepare(req, p) for p in req.prompts()]
        if candidates > n:  # ranking needs each token's log-probability
            for _, params in prepared:
                params.logprobs = params.logprobs or 0
        results = await asyncio.gather(
            *(self.core.collect(f"{rid}-{i}", prompt, params, req.stop_list, candidates, lora) for i, (prompt, params) in enumerate(prepared))
        )
        choices, prompt_tokens, completion_tokens = [], 0, 0
        for p_index, ((prompt, _), out) in enumerate(zip(prepared, results)):
            prompt_tokens += len(prompt)
            completion_tokens += out.produced  # every candidate was generated, and counts
            if candidates > n:
                out = _best(out, n)
            echo = self.core.tokenizer.decode(prompt) if req.echo else ""
            for j in range(n):
                lp = self._logprobs(out.logprobs[j], len(echo)) if req.logprobs is not None else None
                choices.append(protocol.completion_choice(p_index * n + j, echo + out.texts[j], out.finishes[j], lp))
        return protocol.text_completion(rid, protocol.now(), req.model, choices, protocol.usage(prompt_tokens, completion_tokens))

    async def completion_stream(self, req: CompletionRequest) -> AsyncIterator[str]:
        prepared = [self._prepare(req, p) for p in req.prompts()]  # a bad request raises at the first message
        rid, created = protocol.new_id("cmpl"), protocol.now()
        tally = Tally(sum(len(prompt) for prompt, _ in prepared))

        def chunk(choices: list, usage: dict[str, int] | None = None) -> dict[str, Any]:
            return protocol.text_completion(rid, created, req.model, choices, usage)

        usage_chunk = (lambda usage: chunk([], usage)) if req.include_usage else None
        async with aclosing(self.core.sse_stream(self._chunks(req, rid, prepared, tally, chunk), tally, usage_chunk)) as messages:
            async for message in messages:
                yield message

    async def _chunks(self, req, rid, prepared, tally: Tally, chunk) -> AsyncIterator[dict[str, Any]]:
        """Every prompt's choices, merged as they come; choice ``p * n + j`` is prompt p's j-th."""
        n, lora = req.n or 1, self.core.lora(req.model)

        async def one_prompt(p_index: int, prompt: list[int], params: SamplingParams) -> AsyncIterator[tuple[int, ChoiceDelta]]:
            async with aclosing(self.core.choices(f"{rid}-{p_index}", prompt, params, req.stop_list, n, lora)) as deltas:
                async for d in deltas:
                    yield p_index, d

        offsets = [0] * (len(prepared) * n)
        streams = [one_prompt(i, prompt, params) for i, (prompt, params) in enumerate(prepared)]
        async with aclosing(merge(streams)) as deltas:
            async for p_index, d in deltas:
                index = p_index * n + d.index
                tally.completion_tokens += len(d.token_ids)
                lp = self._logprobs(d.logprobs, offsets[index]) if req.logprobs is not None else None
                offsets[index] += len(d.text)
                if d.text or lp or d.finish_reason:
                    yield chunk([protocol.completion_choice(index, d.text, d.finish_reason, lp)])

    def _prepare(self, req: CompletionRequest, prompt: str | list[int]) -> tuple[list[int], SamplingParams]:
        if isinstance(prompt, str):
            ids = self.core.tokenizer.encode(prompt)
        else:
            ids = list(prompt)
            self.core.check_token_ids(ids, "Prompt token ids", "prompt")
        if not ids:
            raise invalid("The prompt is empty.", "prompt")
        params = self.core.sampling(req, len(ids), req.max_tokens, "max_tokens", "prompt")
        if req.logprobs is not None:
            params.logprobs = req.logprobs
        return ids, params

    def _logprobs(self, items: list[TokenLogprob] | None, offset: int) -> dict[str, Any]:
        token_text = self.core.tokenizer.token_text
        tokens, token_logprobs, top, offsets = [], [], [], []
        for item in items or []:
            text = token_text(item.token_id)
            tokens.append(text)
            token_logprobs.append(item.logprob)
            top.append({token_text(t): lp for t, lp in item.top})
            offsets.append(offset)
            offset += len(text)
        return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top, "text_offset": offsets}


def _best(out: Collected, n: int) -> Collected:
    """``best_of``: the ``n`` candidates with the highest total log-probability."""
    best = sorted(range(len(out.texts)), key=lambda j: -sum(lp.logprob for lp in out.logprobs[j]))[:n]
    return Collected([out.texts[j] for j in best], [out.finishes[j] for j in best], [out.logprobs[j] for j in best], out.produced)
