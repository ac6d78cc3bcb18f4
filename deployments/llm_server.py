"""The LLM model server: OpenAI chat and legacy completions on top of one :class:`Engine`.

This class is the body of each LLM deployment (``deployments/deployment.py`` wraps it for Ray
Serve) and runs in-process in the fast tests. It owns what is the same for every engine:
chat templates, context-length checks, turning OpenAI parameters into :class:`SamplingParams`,
detokenisation, stop strings, ``n`` choices, logprobs formatting, usage counts and the
streamed chunk sequence. Streams leave here already formatted as SSE text, several events per
message, so the hops behind it (Ray, the ingress, the HTTP proxy) carry few, small messages.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import aclosing
from dataclasses import dataclass, replace
from typing import Any, AsyncIterator

from deployments import protocol, sse, tools
from deployments.config import LLMConfig
from deployments.engines.base import Engine, InvalidRequest, LoRARef, SamplingParams, TokenLogprob
from deployments.errors import APIError, ErrorKind, invalid, unavailable
from deployments.protocol import ChatCompletionRequest, CompletionRequest
from deployments.text import IncrementalDetokenizer, StopChecker

logger = logging.getLogger("ray.serve")


@dataclass
class ChoiceDelta:
    """New output of one choice: text, the tokens behind it, and how it ended (if it did)."""

    index: int
    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprob] | None
    finish_reason: str | None


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
        from deployments import model_store

        # every name a request may use for an adapter -> the adapter (its folder resolved once)
        self._adapters = {
            name: LoRARef(a.name, model_store.resolve(a.source))
            for a in config.lora_adapters
            for name in (a.name, f"{config.id}:{a.name}")
        }
        self.tokenizer = engine.tokenizer
        self.max_model_len = engine.info().max_model_len
        self.vocab_size = getattr(self.tokenizer, "vocab_size", None)
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

    # ------------------------------------------------------------------ chat
    async def chat(self, req: ChatCompletionRequest) -> dict[str, Any]:
        prompt, params, stops, tool_names = self._prepare_chat(req)
        rid = protocol.new_id("chatcmpl")
        texts, finishes, logprobs, produced = await self._collect(rid, prompt, params, stops, req.n or 1, self._lora(req.model))
        choices = []
        for i, text in enumerate(texts):
            content, calls = tools.parse(text, tool_names) if tool_names else (text, [])
            choices.append(
                protocol.chat_choice(
                    i,
                    content if content or not calls else None,
                    finishes[i],
                    self._chat_logprobs(logprobs[i]) if req.logprobs else None,
                    [c.as_dict() for c in calls],
                    req.uses_functions,
                )
            )
        return protocol.chat_completion(rid, protocol.now(), req.model, choices, protocol.usage(len(prompt), produced))

    async def chat_stream(self, req: ChatCompletionRequest) -> AsyncIterator[str]:
        prompt, params, stops, tool_names = self._prepare_chat(req)
        rid, created, model, n = protocol.new_id("chatcmpl"), protocol.now(), req.model, req.n or 1
        lora = self._lora(req.model)
        # with tools, text that may be a call is held back until it can be parsed
        splitters = [tools.StreamSplitter(tool_names) for _ in range(n)] if tool_names else None

        def chunk(choices, usage=None) -> str:
            return sse.event(protocol.chat_chunk(rid, created, model, choices, usage))

        async def events() -> AsyncIterator[str]:
            yield chunk([protocol.chat_chunk_choice(i, {"role": "assistant", "content": ""}) for i in range(n)])
            produced = 0
            async with aclosing(self._choices(rid, prompt, params, stops, n, lora)) as deltas:
                async for d in deltas:
                    produced += len(d.token_ids)
                    lp = self._chat_logprobs(d.logprobs) if req.logprobs else None
                    text = splitters[d.index].feed(d.text) if splitters else d.text
                    if text or lp:
                        yield chunk([protocol.chat_chunk_choice(d.index, {"content": text}, None, lp)])
                    if d.finish_reason:
                        finish = d.finish_reason
                        if splitters:
                            rest, calls = splitters[d.index].finish()
                            if rest:
                                yield chunk([protocol.chat_chunk_choice(d.index, {"content": rest})])
                            if calls:
                                for delta in protocol.call_deltas([c.as_dict() for c in calls], req.uses_functions):
                                    yield chunk([protocol.chat_chunk_choice(d.index, delta)])
                                finish = protocol.calls_finish_reason(req.uses_functions)
                        yield chunk([protocol.chat_chunk_choice(d.index, {}, finish)])
            if req.include_usage:
                yield chunk([], protocol.usage(len(prompt), produced))
            yield sse.usage_comment(protocol.usage(len(prompt), produced))  # for the ingress's metrics
            yield sse.DONE

        async with aclosing(self._coalesce(events())) as messages:
            async for message in messages:
                yield message

    def _prepare_chat(self, req: ChatCompletionRequest) -> tuple[list[int], SamplingParams, list[str], set[str] | None]:
        """Prompt, engine parameters, stop strings, and the names of the tools the answer may call
        (None: no tools; the answer is plain text)."""
        use_tools = bool(req.tools) and req.tool_choice != "none"
        prompt = self._render_chat(req.messages, req.tool_dicts if use_tools else None)
        params = self._sampling(req, len(prompt), req.max_new_tokens, "max_completion_tokens" if req.max_completion_tokens else "max_tokens")
        if req.logprobs:
            params.logprobs = req.top_logprobs or 0
        if not use_tools:
            if req.json_schema is not None:
                params.json_schema = self._checked_schema(req.json_schema, "response_format")
            return prompt, params, req.stop_list, None
        named = req.tool_choice.function.name if isinstance(req.tool_choice, protocol.NamedToolChoice) else None
        if named is not None or req.tool_choice == "required":  # the answer is constrained to a call
            schema = tools.call_schema(req.tool_dicts, named, req.parallel_tool_calls is not False)
            params.json_schema = self._checked_schema(schema, req.param_name("tool_choice"))
        return prompt, params, req.stop_list, {t.function.name for t in req.tools}

    def _render_chat(self, messages: list, tool_dicts: list[dict[str, Any]] | None) -> list[int]:
        """The prompt for the assistant's next turn: the chat template over the messages, with
        the tools (in the template's own terms where it knows tools, else as a system section)."""
        native = bool(tool_dicts) and self.tokenizer.supports_tools
        rendered = self._chat_messages(messages, native)
        if tool_dicts and not native:
            section = tools.system_prompt(tool_dicts)
            if rendered[0]["role"] == "system":
                rendered[0] = {**rendered[0], "content": rendered[0]["content"] + "\n\n" + section}
            else:
                rendered.insert(0, {"role": "system", "content": section})
        try:
            return self.tokenizer.chat_prompt(rendered, tool_dicts if native else None)
        except Exception as exc:  # a template that rejects the conversation (e.g. role order)
            raise invalid(f"The model's chat template rejected these messages: {exc}", "messages") from exc

    def _chat_messages(self, messages: list, native_tools: bool) -> list[dict[str, Any]]:
        """The conversation as chat-template messages. Earlier tool calls and their results are
        passed in the template's own terms where it knows tools, else written as text."""
        out = []
        for m in messages:
            role = "system" if m.role == "developer" else m.role
            message: dict[str, Any] = {"role": role, "content": protocol.message_text(m.content)}
            calls = getattr(m, "tool_calls", None)
            if calls and native_tools:
                message["tool_calls"] = [
                    {"id": c.id, "type": "function", "function": {"name": c.function.name, "arguments": tools.arguments_value(c.function.arguments)}}
                    for c in calls
                ]
            elif calls:
                written = "\n".join(tools.call_text(c.function.name, c.function.arguments) for c in calls)
                message["content"] = (message["content"] + "\n" if message["content"] else "") + written
            if role == "tool" and native_tools:
                message["tool_call_id"] = m.tool_call_id
            out.append(message)
        return out

    def _checked_schema(self, schema: dict[str, Any], param: str) -> dict[str, Any]:
        try:
            self.engine.check_structured(schema)
        except InvalidRequest as exc:
            raise invalid(str(exc), param, "unsupported_schema") from exc
        return schema

    def _chat_logprobs(self, items: list[TokenLogprob] | None) -> list[dict[str, Any]]:
        def entry(token_id: int, logprob: float) -> dict[str, Any]:
            text = self.tokenizer.token_text(token_id)
            return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

        return [
            {**entry(item.token_id, item.logprob), "top_logprobs": [entry(t, lp) for t, lp in item.top]}
            for item in items or []
        ]

    # ------------------------------------------------------------------ tokenizer
    async def tokenize(self, req: protocol.TokenizeRequest) -> dict[str, Any]:
        if req.prompt is not None:
            ids = self.tokenizer.encode(req.prompt)
        else:
            ids = self._render_chat(req.messages, req.tool_dicts or None)
        out: dict[str, Any] = {"count": len(ids), "max_model_len": self.max_model_len, "tokens": ids}
        if req.return_token_strs:
            out["token_strs"] = [self.tokenizer.token_text(t) for t in ids]
        return out

    async def detokenize(self, req: protocol.DetokenizeRequest) -> dict[str, Any]:
        if self.vocab_size is not None and any(not 0 <= t < self.vocab_size for t in req.tokens):
            raise invalid(f"Token ids must be in [0, {self.vocab_size}).", "tokens")
        return {"prompt": self.tokenizer.decode(req.tokens)}

    # ------------------------------------------------------------------ legacy completions
    async def completion(self, req: CompletionRequest) -> dict[str, Any]:
        rid, n, lora = protocol.new_id("cmpl"), req.n or 1, self._lora(req.model)
        candidates = max(req.best_of or n, n)
        prepared = [self._prepare_completion(req, p, i) for i, p in enumerate(req.prompts())]
        if candidates > n:  # ranking needs each token's log-probability
            for _, params in prepared:
                params.logprobs = params.logprobs or 0
        results = await asyncio.gather(
            *(self._collect(f"{rid}-{i}", prompt, params, req.stop_list, candidates, lora) for i, (prompt, params) in enumerate(prepared))
        )
        choices, prompt_tokens, completion_tokens = [], 0, 0
        for p_index, ((prompt, _), (texts, finishes, logprobs, produced)) in enumerate(zip(prepared, results)):
            prompt_tokens += len(prompt)
            completion_tokens += produced  # every candidate was generated, and counts
            if candidates > n:  # best_of: the n candidates with the highest total log-probability
                best = sorted(range(candidates), key=lambda j: -sum(lp.logprob for lp in logprobs[j]))[:n]
                texts, finishes, logprobs = [texts[j] for j in best], [finishes[j] for j in best], [logprobs[j] for j in best]
            echo = self.tokenizer.decode(prompt) if req.echo else ""
            for j in range(n):
                lp = self._completion_logprobs(logprobs[j], len(echo)) if req.logprobs is not None else None
                choices.append(protocol.completion_choice(p_index * n + j, echo + texts[j], finishes[j], lp))
        return protocol.text_completion(
            rid, protocol.now(), req.model, choices, protocol.usage(prompt_tokens, completion_tokens)
        )

    async def completion_stream(self, req: CompletionRequest) -> AsyncIterator[str]:
        rid, created, model, n = protocol.new_id("cmpl"), protocol.now(), req.model, req.n or 1
        lora = self._lora(req.model)
        prepared = [self._prepare_completion(req, p, i) for i, p in enumerate(req.prompts())]

        def chunk(choices, usage=None) -> str:
            return sse.event(protocol.text_completion(rid, created, model, choices, usage))

        async def one_prompt(p_index: int, prompt: list[int], params: SamplingParams) -> AsyncIterator[tuple[int, ChoiceDelta]]:
            async with aclosing(self._choices(f"{rid}-{p_index}", prompt, params, req.stop_list, n, lora)) as deltas:
                async for d in deltas:
                    yield p_index, d

        async def events() -> AsyncIterator[str]:
            produced = 0
            offsets = [0] * (len(prepared) * n)
            streams = [one_prompt(i, prompt, params) for i, (prompt, params) in enumerate(prepared)]
            async with aclosing(merge(streams)) as deltas:
                async for p_index, d in deltas:
                    index = p_index * n + d.index
                    produced += len(d.token_ids)
                    lp = self._completion_logprobs(d.logprobs, offsets[index]) if req.logprobs is not None else None
                    offsets[index] += len(d.text)
                    if d.text or lp or d.finish_reason:
                        yield chunk([protocol.completion_choice(index, d.text, d.finish_reason, lp)])
            usage = protocol.usage(sum(len(p) for p, _ in prepared), produced)
            if req.include_usage:
                yield chunk([], usage)
            yield sse.usage_comment(usage)  # for the ingress's metrics
            yield sse.DONE

        async with aclosing(self._coalesce(events())) as messages:
            async for message in messages:
                yield message

    def _prepare_completion(self, req: CompletionRequest, prompt: str | list[int], index: int) -> tuple[list[int], SamplingParams]:
        if isinstance(prompt, str):
            ids = self.tokenizer.encode(prompt)
        else:
            ids = list(prompt)
            if self.vocab_size is not None and any(not 0 <= t < self.vocab_size for t in ids):
                raise invalid(f"Prompt token ids must be in [0, {self.vocab_size}).", "prompt")
        if not ids:
            raise invalid("The prompt is empty.", "prompt")
        params = self._sampling(req, len(ids), req.max_tokens, "max_tokens")
        if req.logprobs is not None:
            params.logprobs = req.logprobs
        return ids, params

    def _completion_logprobs(self, items: list[TokenLogprob] | None, offset: int) -> dict[str, Any]:
        tokens, token_logprobs, top, offsets = [], [], [], []
        for item in items or []:
            text = self.tokenizer.token_text(item.token_id)
            tokens.append(text)
            token_logprobs.append(item.logprob)
            top.append({self.tokenizer.token_text(t): lp for t, lp in item.top})
            offsets.append(offset)
            offset += len(text)
        return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top, "text_offset": offsets}

    # ------------------------------------------------------------------ shared generation path
    def _lora(self, model: str) -> LoRARef | None:
        """The LoRA adapter the request's ``model`` names (``<id>:<adapter>`` or the adapter's name)."""
        return self._adapters.get(model)

    def _sampling(self, req, prompt_len: int, max_new: int | None, max_param: str) -> SamplingParams:
        """OpenAI parameters -> engine parameters, with the context-length check."""
        room = self.max_model_len - prompt_len
        if room < 1 or (max_new is not None and max_new > room):
            asked = f" + {max_new} requested completion tokens" if max_new else ""
            raise APIError(
                ErrorKind.CONTEXT_LENGTH,
                f"This model's maximum context length is {self.max_model_len} tokens. "
                f"The request has {prompt_len} prompt tokens{asked}; reduce the prompt or {max_param}.",
                param="messages" if isinstance(req, ChatCompletionRequest) else "prompt",
            )
        bias: dict[int, float] = {}
        for key, value in (req.logit_bias or {}).items():
            token = int(key)
            if self.vocab_size is not None and not 0 <= token < self.vocab_size:
                raise invalid(f"logit_bias token id {token} is outside the vocabulary [0, {self.vocab_size}).", "logit_bias")
            bias[token] = float(value)
        temperature = 1.0 if req.temperature is None else req.temperature
        return SamplingParams(
            max_tokens=room if max_new is None else max_new,
            temperature=temperature,
            top_p=1.0 if req.top_p is None else req.top_p,
            top_k=req.top_k or 0,
            min_p=req.min_p or 0.0,
            seed=req.seed,
            presence_penalty=req.presence_penalty or 0.0,
            frequency_penalty=req.frequency_penalty or 0.0,
            repetition_penalty=req.repetition_penalty or 1.0,
            logit_bias=bias,
            stop_token_ids=list(req.stop_token_ids or []),
            ignore_eos=bool(req.ignore_eos),
            min_tokens=req.min_tokens or 0,
        )

    async def _collect(
        self, rid: str, prompt: list[int], params: SamplingParams, stops: list[str], n: int, lora: LoRARef | None
    ) -> tuple[list[str], list[str], list[list[TokenLogprob]], int]:
        """Run ``n`` choices to the end: texts, finish reasons, logprobs, completion tokens."""
        texts = [""] * n
        finishes = ["stop"] * n
        logprobs: list[list[TokenLogprob]] = [[] for _ in range(n)]
        produced = 0
        async with aclosing(self._choices(rid, prompt, params, stops, n, lora)) as deltas:
            async for d in deltas:
                texts[d.index] += d.text
                produced += len(d.token_ids)
                logprobs[d.index].extend(d.logprobs or [])
                if d.finish_reason:
                    finishes[d.index] = d.finish_reason
        return texts, finishes, logprobs, produced

    def _choices(
        self, rid: str, prompt: list[int], params: SamplingParams, stops: list[str], n: int, lora: LoRARef | None
    ) -> AsyncIterator[ChoiceDelta]:
        if n == 1:
            return self._choice(0, rid, prompt, params, stops, lora)
        streams = []
        for i in range(n):
            # n choices from one seed must differ from each other and still be reproducible.
            seed = None if params.seed is None else params.seed + i
            streams.append(self._choice(i, f"{rid}-{i}", prompt, replace(params, seed=seed), stops, lora))
        return merge(streams)

    async def _choice(
        self, index: int, rid: str, prompt: list[int], params: SamplingParams, stops: list[str], lora: LoRARef | None
    ) -> AsyncIterator[ChoiceDelta]:
        detok = IncrementalDetokenizer(self.tokenizer)
        stopper = StopChecker(stops)
        stream = _engine_faults_as_503(self.engine.generate(rid, prompt, params, lora))
        try:
            async for chunk in stream:
                visible = chunk.token_ids
                if chunk.finish_reason == "stop" and visible and visible[-1] in params.stop_token_ids:
                    visible = visible[:-1]  # like a stop string, a stop token is not part of the text
                text = detok.add(visible)
                if chunk.finish_reason:
                    text += detok.flush()
                emit, stopped = stopper.feed(text)
                if stopped:
                    yield ChoiceDelta(index, emit, chunk.token_ids, chunk.logprobs, "stop")
                    return
                if chunk.finish_reason:
                    yield ChoiceDelta(index, emit + stopper.flush(), chunk.token_ids, chunk.logprobs, chunk.finish_reason)
                    return
                yield ChoiceDelta(index, emit, chunk.token_ids, chunk.logprobs, None)
        finally:
            await stream.aclose()  # aborts the engine request if it is still running

    async def _coalesce(self, messages: AsyncIterator[str]) -> AsyncIterator[str]:
        """Join SSE events produced within ``stream_interval_ms`` into one message."""
        interval = self.config.stream_interval_ms / 1000.0
        buffer: list[str] = []
        last = 0.0
        async with aclosing(messages):
            async for message in messages:
                buffer.append(message)
                t = time.monotonic()
                if t - last >= interval:
                    yield "".join(buffer)
                    buffer.clear()
                    last = t
        if buffer:
            yield "".join(buffer)


async def _engine_faults_as_503(stream: AsyncIterator) -> AsyncIterator:
    """An engine that fails mid-request is the server's trouble, not the client's: the client
    gets a 503 it may retry (the failure is logged, and the engine's health check makes Ray
    Serve replace the replica)."""
    try:
        async with aclosing(stream):
            async for item in stream:
                yield item
    except APIError:
        raise
    except InvalidRequest as exc:
        raise invalid(str(exc), exc.param) from exc
    except Exception as exc:  # noqa: BLE001
        logger.error("engine failed during a request: %r", exc)
        raise unavailable("The model's engine failed while generating; retry shortly.") from exc


async def merge(streams: list[AsyncIterator]) -> AsyncIterator:
    """Items of several async iterators as they come; closing the merge closes them all."""
    queue: asyncio.Queue = asyncio.Queue()
    done = object()

    async def pump(stream: AsyncIterator) -> None:
        try:
            async with aclosing(stream):
                async for item in stream:
                    await queue.put(item)
        except Exception as exc:  # noqa: BLE001 - re-raised in the consumer
            await queue.put(exc)
        finally:
            await queue.put(done)

    tasks = [asyncio.create_task(pump(s)) for s in streams]
    try:
        remaining = len(tasks)
        while remaining:
            item = await queue.get()
            if item is done:
                remaining -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
