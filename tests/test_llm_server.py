"""The LLM model server's parts (``deployments/llm/``) through ``LLMServer``'s public methods, on
the fake engine: the one stream writer, the vocabulary and context checks, and aborts."""

from __future__ import annotations

import asyncio
import json

import pytest

from deployments import protocol, sse
from deployments.config import LLMConfig
from deployments.engines.fake import FakeEngine
from deployments.errors import APIError, ErrorKind
from deployments.llm_server import LLMServer
from tests.local import construct

VOCAB = 257  # the fake engine's byte tokenizer


async def _server(engine: FakeEngine | None = None) -> tuple[LLMServer, FakeEngine]:
    engine = engine or FakeEngine(max_model_len=128)
    return await construct(LLMServer, LLMConfig(id="fake", source="unused", stream_interval_ms=0), engine), engine


def _chat(**kw) -> protocol.ChatCompletionRequest:
    return protocol.ChatCompletionRequest.model_validate({"model": "fake", "messages": [{"role": "user", "content": "abc"}], **kw})


def _completion(**kw) -> protocol.CompletionRequest:
    return protocol.CompletionRequest.model_validate({"model": "fake", "prompt": "abc", **kw})


async def _events(stream) -> list[str]:
    """The SSE events of a stream, in order (messages may carry several)."""
    text = "".join([m async for m in stream])
    return [e + "\n\n" for e in text.split("\n\n") if e]


def _payloads(events: list[str]) -> list[dict]:
    return [json.loads(e.removeprefix("data: ")) for e in events if e.startswith("data: {")]


@pytest.mark.parametrize("kind", ["chat", "completion"])
@pytest.mark.parametrize("include_usage", [True, False])
async def test_a_stream_ends_once_with_its_usage(kind, include_usage):
    server, _ = await _server()
    options = {"stream_options": {"include_usage": True}} if include_usage else {}
    req = _chat(stream=True, n=2, **options) if kind == "chat" else _completion(stream=True, n=2, **options)
    whole = await (server.chat(_chat(n=2)) if kind == "chat" else server.completion(_completion(n=2)))
    events = await _events(server.chat_stream(req) if kind == "chat" else server.completion_stream(req))

    assert events[-1] == sse.DONE and events.count(sse.DONE) == 1
    comments = [e for e in events if e.startswith(":")]
    assert len(comments) == 1 and events[-2] == comments[0]
    assert sse.take_usage_comment(comments[0].encode())[1] == whole["usage"]
    payloads = _payloads(events)
    usage_chunks = [p for p in payloads if p.get("usage")]
    assert usage_chunks == ([payloads[-1]] if include_usage else [])
    if include_usage:
        assert payloads[-1]["choices"] == [] and payloads[-1]["usage"] == whole["usage"]
    finishes = [(c["index"], c["finish_reason"]) for p in payloads for c in p["choices"] if c.get("finish_reason")]
    assert sorted(finishes) == [(0, "stop"), (1, "stop")]


async def test_completion_stream_numbers_each_prompts_choices():
    server, _ = await _server()
    events = await _events(server.completion_stream(_completion(prompt=["ab", "xyz"], n=2, stream=True)))
    texts: dict[int, str] = {}
    for p in _payloads(events):
        for c in p["choices"]:
            texts[c["index"]] = texts.get(c["index"], "") + c["text"]
    assert texts == {0: "ba", 1: "ba", 2: "zyx", 3: "zyx"}


@pytest.mark.parametrize(
    "call, param",
    [
        (lambda s: s.detokenize(protocol.DetokenizeRequest(model="fake", tokens=[1, VOCAB])), "tokens"),
        (lambda s: s.completion(_completion(prompt=[5, VOCAB + 3])), "prompt"),
        (lambda s: s.chat(_chat(logit_bias={str(VOCAB): 1})), "logit_bias"),
        (lambda s: s.completion(_completion(logit_bias={"-1": 1})), "logit_bias"),
    ],
)
async def test_token_ids_outside_the_vocabulary_are_a_400_naming_the_parameter(call, param):
    server, _ = await _server()
    with pytest.raises(APIError) as caught:
        await call(server)
    assert caught.value.kind is ErrorKind.INVALID_REQUEST and caught.value.param == param
    assert f"[0, {VOCAB})" in str(caught.value)


async def test_token_ids_inside_the_vocabulary_pass():
    server, _ = await _server()
    assert (await server.detokenize(protocol.DetokenizeRequest(model="fake", tokens=[97, 98])))["prompt"] == "ab"
    answer = await server.completion(_completion(prompt=[97, 98, 99], logit_bias={str(VOCAB - 1): 1}))
    assert answer["choices"][0]["text"] == "cba"


@pytest.mark.parametrize("kind, param", [("chat", "messages"), ("completion", "prompt")])
async def test_over_the_context_is_a_context_length_error_naming_the_prompt(kind, param):
    server, _ = await _server()
    req = _chat(max_tokens=500) if kind == "chat" else _completion(max_tokens=500)
    with pytest.raises(APIError) as caught:
        await (server.chat(req) if kind == "chat" else server.completion(req))
    assert caught.value.kind is ErrorKind.CONTEXT_LENGTH and caught.value.param == param
    assert "maximum context length is 128 tokens" in str(caught.value)


async def test_a_bad_streamed_request_raises_before_any_message():
    server, engine = await _server()
    stream = server.completion_stream(_completion(prompt=[VOCAB], stream=True))
    with pytest.raises(APIError) as caught:
        await stream.__anext__()
    assert caught.value.param == "prompt" and not engine.running


async def test_closing_a_stream_aborts_every_choice_in_the_engine():
    server, engine = await _server(FakeEngine(max_model_len=4096, step_delay=0.01))
    stream = server.chat_stream(_chat(stream=True, n=3, max_tokens=1000, ignore_eos=True))
    await stream.__anext__()
    await stream.__anext__()
    assert len(engine.running) == 3
    await stream.aclose()
    await asyncio.sleep(0.05)
    assert not engine.running and len(engine.aborted) == 3


async def test_the_first_token_is_not_held_behind_the_role_chunk():
    """The chat's role chunk goes at once and opens no coalescing window: one it opened would
    hold the first token back by up to ``stream_interval_ms`` (at once on a GPU: the whole window)."""
    import time

    script = "hello, this answer takes a second to stream out"  # 48 tokens, 20 ms apart
    engine = FakeEngine(script=script, step_delay=0.02, max_model_len=128)
    server = await construct(LLMServer, LLMConfig(id="fake", source="unused", stream_interval_ms=1000), engine)
    start, arrivals = time.monotonic(), []
    async for message in server.chat_stream(_chat(stream=True)):
        arrivals.append((time.monotonic() - start, _payloads(await _events(_once(message)))))
    assert arrivals[0][1][0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    first_text = next(t for t, payloads in arrivals if any(p["choices"] and p["choices"][0]["delta"].get("content") for p in payloads))
    assert first_text < 0.5, f"the first token came {first_text:.2f} s in, held by the 1 s window"
    text = "".join(p["choices"][0]["delta"].get("content") or "" for _, ps in arrivals for p in ps if p["choices"])
    assert text == script


async def _once(message: str):
    yield message
