"""The generation core both LLM API halves share (``deployments/llm``).

It owns what does not depend on the API: the engine, the tokenizer, LoRA adapters by name,
OpenAI sampling parameters in engine terms (with the context-length and vocabulary checks),
``n`` choices merged as they come, detokenisation and stop strings per choice, and the one way
a stream is written (chunks as SSE events, the usage chunk when asked, the usage comment for
the ingress's metrics, ``[DONE]``, events coalesced per ``stream_interval_ms``).
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import aclosing
from dataclasses import dataclass, replace
from typing import Any, AsyncIterator, Callable

from deployments import protocol, sse
from deployments.config import LLMConfig
from deployments.engines.base import Engine, InvalidRequest, LoRARef, SamplingParams, TokenLogprob
from deployments.errors import APIError, ErrorKind, invalid, unavailable
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


@dataclass
class Collected:
    """``n`` choices run to their end."""

    texts: list[str]
    finishes: list[str]
    logprobs: list[list[TokenLogprob]]
    produced: int  # completion tokens of all choices


@dataclass
class Tally:
    """Token counts of one answer, kept while it streams."""

    prompt_tokens: int
    completion_tokens: int = 0

    def usage(self) -> dict[str, int]:
        return protocol.usage(self.prompt_tokens, self.completion_tokens)


class GenerationCore:
    """One model's engine and what every API does with it."""

    def __init__(self, config: LLMConfig, engine: Engine) -> None:
        from deployments import model_store

        self.config = config
        self.engine = engine
        # every name a request may use for an adapter -> the adapter (its folder resolved once)
        self._adapters = {
            name: LoRARef(a.name, model_store.resolve(a.source))
            for a in config.lora_adapters
            for name in (a.name, f"{config.id}:{a.name}")
        }
        self.tokenizer = engine.tokenizer
        self.max_model_len = engine.info().max_model_len
        self.vocab_size = getattr(self.tokenizer, "vocab_size", None)

    def lora(self, model: str) -> LoRARef | None:
        """The LoRA adapter the request's ``model`` names (``<id>:<adapter>`` or the adapter's name)."""
        return self._adapters.get(model)

    def check_token_ids(self, ids, what: str, param: str) -> None:
        """A 400 naming ``param`` unless every id is in the model's vocabulary."""
        if self.vocab_size is not None and any(not 0 <= t < self.vocab_size for t in ids):
            raise invalid(f"{what} must be in [0, {self.vocab_size}).", param)

    def check_structured(self, schema: dict[str, Any], param: str) -> dict[str, Any]:
        """``schema`` if the engine can constrain its output to it, else a 400 naming ``param``."""
        try:
            self.engine.check_structured(schema)
        except InvalidRequest as exc:
            raise invalid(str(exc), param, "unsupported_schema") from exc
        return schema

    # ------------------------------------------------------------------ sampling
    def sampling(self, req, prompt_len: int, max_new: int | None, max_param: str, prompt_param: str) -> SamplingParams:
        """OpenAI parameters -> engine parameters, with the context-length check."""
        room = self.max_model_len - prompt_len
        if room < 1 or (max_new is not None and max_new > room):
            asked = f" + {max_new} requested completion tokens" if max_new else ""
            raise APIError(
                ErrorKind.CONTEXT_LENGTH,
                f"This model's maximum context length is {self.max_model_len} tokens. "
                f"The request has {prompt_len} prompt tokens{asked}; reduce the prompt or {max_param}.",
                param=prompt_param,
            )
        bias = {int(key): float(value) for key, value in (req.logit_bias or {}).items()}
        self.check_token_ids(bias, "logit_bias token ids", "logit_bias")
        return SamplingParams(
            max_tokens=room if max_new is None else max_new,
            temperature=1.0 if req.temperature is None else req.temperature,
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

    # ------------------------------------------------------------------ generation
    async def collect(
        self, rid: str, prompt: list[int], params: SamplingParams, stops: list[str], n: int, lora: LoRARef | None
    ) -> Collected:
        """Run ``n`` choices to the end."""
        out = Collected([""] * n, ["stop"] * n, [[] for _ in range(n)], 0)
        async with aclosing(self.choices(rid, prompt, params, stops, n, lora)) as deltas:
            async for d in deltas:
                out.texts[d.index] += d.text
                out.produced += len(d.token_ids)
                out.logprobs[d.index].extend(d.logprobs or [])
                if d.finish_reason:
                    out.finishes[d.index] = d.finish_reason
        return out

    def choices(
        self, rid: str, prompt: list[int], params: SamplingParams, stops: list[str], n: int, lora: LoRARef | None
    ) -> AsyncIterator[ChoiceDelta]:
        """The new output of ``n`` choices of one prompt, as it comes."""
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

    # ------------------------------------------------------------------ streams
    async def sse_stream(
        self,
        chunks: AsyncIterator[dict[str, Any]],
        tally: Tally,
        usage_chunk: Callable[[dict[str, int]], dict[str, Any]] | None,
        lead: dict[str, Any] | None = None,
    ) -> AsyncIterator[str]:
        """The one way an answer streams: each chunk as an SSE event; at the end the usage chunk
        (``usage_chunk``, when the client asked for it), the usage comment the ingress's metrics
        read, and ``[DONE]``. Events produced within ``stream_interval_ms`` go as one message, so
        the hops behind the server carry few, small messages. ``lead`` (the chat's role chunk)
        goes first, at once, and opens no window: it carries no text, and a window it opened
        would hold the first token back by up to ``stream_interval_ms``."""
        if lead is not None:
            yield sse.event(lead)

        async def events() -> AsyncIterator[str]:
            async with aclosing(chunks):
                async for chunk in chunks:
                    yield sse.event(chunk)
            usage = tally.usage()
            if usage_chunk is not None:
                yield sse.event(usage_chunk(usage))
            yield sse.usage_comment(usage)
            yield sse.DONE

        async with aclosing(coalesce(events(), self.config.stream_interval_ms / 1000.0)) as messages:
            async for message in messages:
                yield message


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


async def _pump(stream: AsyncIterator, queue: asyncio.Queue, end: object) -> None:
    """Put ``stream``'s items in the (unbounded) ``queue`` as they come, then the exception it
    raised if it failed, then ``end``. The stream runs, and is closed, in the calling task: a
    consumer that cancels this task cancels the stream where it runs."""
    try:
        async with aclosing(stream):
            async for item in stream:
                queue.put_nowait(item)
    except Exception as exc:  # noqa: BLE001 - re-raised by the consumer
        queue.put_nowait(exc)
    finally:
        queue.put_nowait(end)


async def coalesce(messages: AsyncIterator[str], interval_s: float) -> AsyncIterator[str]:
    """Join the messages produced within ``interval_s`` of the last one sent into one message.

    A message goes at once when nothing was sent within the window; otherwise it waits for the
    window to close, with whatever else arrives meanwhile. No message waits longer than that,
    even when the next one is slow to come (the engine busy with other requests' prefills): a
    task of its own reads the source into a queue, and a timer puts the window's end in it. The
    source runs in that task from start to end; closing this stream cancels it there."""
    if interval_s <= 0:
        async with aclosing(messages):
            async for message in messages:
                yield message
        return
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    end, window_closed = object(), object()
    reader = asyncio.create_task(_pump(messages, queue, end))
    timer: asyncio.TimerHandle | None = None
    held: list[str] = []
    last = float("-inf")  # loop time of the last message sent
    try:
        while True:
            item = await queue.get()
            if item is window_closed:
                timer = None
                yield "".join(held)
                held.clear()
                last = loop.time()
            elif item is end:
                break
            elif isinstance(item, Exception):  # what came before the failure goes first
                if held:
                    yield "".join(held)
                raise item
            elif held or loop.time() - last < interval_s:
                held.append(item)
                if timer is None:
                    timer = loop.call_at(last + interval_s, queue.put_nowait, window_closed)
            else:
                yield item
                last = loop.time()
        if held:
            yield "".join(held)
    finally:
        if timer is not None:
            timer.cancel()
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)


async def merge(streams: list[AsyncIterator]) -> AsyncIterator:
    """Items of several async iterators as they come; closing the merge closes them all."""
    queue: asyncio.Queue = asyncio.Queue()
    done = object()
    tasks = [asyncio.create_task(_pump(stream, queue, done)) for stream in streams]
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
