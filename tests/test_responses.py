"""The Responses API and the tokenizer routes over ASGI, on the fake engine (it answers with the
last user message reversed), with the official ``openai`` client where it has a call for it.

The same calls against the real models, on both engines, are in tests/test_engines_graph.py.
"""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from deployments.api import create_app
from deployments.routing import LLM, ModelRoute, Router
from deployments.config import LLMConfig, ServerConfig
from deployments.engines.fake import FakeEngine
from deployments.llm_server import LLMServer
from tests.local import LocalHandle, construct
from tests.spec import validate

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
EVENT_SCHEMAS = {
    "response.created": "ResponseCreatedEvent",
    "response.in_progress": "ResponseInProgressEvent",
    "response.output_item.added": "ResponseOutputItemAddedEvent",
    "response.content_part.added": "ResponseContentPartAddedEvent",
    "response.output_text.delta": "ResponseTextDeltaEvent",
    "response.output_text.done": "ResponseTextDoneEvent",
    "response.content_part.done": "ResponseContentPartDoneEvent",
    "response.output_item.done": "ResponseOutputItemDoneEvent",
    "response.function_call_arguments.delta": "ResponseFunctionCallArgumentsDeltaEvent",
    "response.function_call_arguments.done": "ResponseFunctionCallArgumentsDoneEvent",
    "response.completed": "ResponseCompletedEvent",
    "response.incomplete": "ResponseIncompleteEvent",
}
CALL = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'


@pytest.fixture(scope="module")
async def app():
    llm = await construct(
        LLMServer, LLMConfig(id="fake-llm", source="unused", stream_interval_ms=0), FakeEngine(max_model_len=4096)
    )
    return create_app(Router([ModelRoute("fake-llm", LLM, LocalHandle(llm))]), server=ServerConfig(responses_store_size=3))


@pytest.fixture(scope="module")
async def client(app):
    c = openai.AsyncOpenAI(
        base_url="http://test/v1", api_key="unused", max_retries=0,
        http_client=httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test"),
    )
    yield c
    await c.close()


@pytest.fixture(scope="module")
async def http(app):
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as c:
        yield c


async def test_text_input_and_instructions(client, http):
    r = await client.responses.create(model="fake-llm", input="olleh", instructions="Be brief.")
    assert r.output_text == "hello" and r.status == "completed"
    assert r.instructions == "Be brief." and r.usage.output_tokens == 6
    raw = (await http.get(f"/v1/responses/{r.id}")).json()
    validate(raw, "Response")
    assert raw["output"][0]["content"][0]["text"] == "hello"


async def test_message_input_and_max_output_tokens(client):
    r = await client.responses.create(
        model="fake-llm",
        input=[{"role": "user", "content": [{"type": "input_text", "text": "dlrow olleh"}]}],
        max_output_tokens=5,
    )
    assert r.output_text == "hello" and r.status == "incomplete"
    assert r.incomplete_details.reason == "max_output_tokens"


async def test_streamed_events_reassemble_to_the_same_response(client, http):
    plain = await client.responses.create(model="fake-llm", input="!gnimaerts")
    kinds, text = [], ""
    async with client.responses.stream(model="fake-llm", input="!gnimaerts") as stream:
        async for event in stream:
            kinds.append(event.type)
            if event.type == "response.output_text.delta":
                text += event.delta
        final = await stream.get_final_response()
    assert text == plain.output_text == final.output_text == "streaming!"
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    for kind in ("response.output_item.added", "response.content_part.added", "response.output_text.done",
                 "response.content_part.done", "response.output_item.done"):
        assert kinds.count(kind) == 1, (kind, kinds)
    raw = await http.post("/v1/responses", json={"model": "fake-llm", "input": "ab", "stream": True})
    events = [block for block in raw.text.split("\n\n") if block]
    numbers = []
    for block in events:
        name, data = block.split("\n")
        payload = json.loads(data.removeprefix("data: "))
        assert name == "event: " + payload["type"]
        validate(payload, EVENT_SCHEMAS[payload["type"]])
        numbers.append(payload["sequence_number"])
    assert numbers == list(range(len(events)))


async def test_function_calls_round_trip_with_previous_response_id(client):
    first = await client.responses.create(model="fake-llm", input=CALL[::-1], tools=[WEATHER])
    [call] = [item for item in first.output if item.type == "function_call"]
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"}
    second = await client.responses.create(
        model="fake-llm",
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}, {"role": "user", "content": "ynnus"}],
        tools=[WEATHER],
    )
    assert second.output_text == "sunny" and second.previous_response_id == first.id


async def test_streamed_function_call_events(client):
    kinds, args = [], ""
    async with client.responses.stream(model="fake-llm", input=CALL[::-1], tools=[WEATHER]) as stream:
        async for event in stream:
            kinds.append(event.type)
            if event.type == "response.function_call_arguments.delta":
                args += event.delta
        final = await stream.get_final_response()
    assert "response.function_call_arguments.done" in kinds
    assert json.loads(args) == {"city": "Paris"}
    assert final.output[-1].type == "function_call" and final.output[-1].arguments == args


async def test_the_store_is_bounded_and_unknown_ids_are_404(client):
    ids = [(await client.responses.create(model="fake-llm", input=str(i))).id for i in range(4)]
    with pytest.raises(openai.NotFoundError) as e:  # size 3: the oldest is gone
        await client.responses.create(model="fake-llm", input="x", previous_response_id=ids[0])
    assert e.value.body["param"] == "previous_response_id"
    await client.responses.delete(ids[3])
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(ids[3])


@pytest.mark.parametrize(
    "body, param",
    [
        ({"reasoning": {"effort": "high"}}, "reasoning"),
        ({"input": [{"type": "web_search_call", "id": "x"}]}, "input[0]"),
        ({"temperature": 9}, "temperature"),
        ({"max_output_tokens": 5000}, "input"),
        ({"text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": 7}}}}, "text.format.schema"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"truncation": "auto"}, "truncation"),
    ],
)
async def test_bad_requests_are_400s_naming_the_parameter(http, body, param):
    r = await http.post("/v1/responses", json={"model": "fake-llm", "input": "hi", **body})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


async def test_tokenize_and_detokenize(http):
    r = await http.post("/tokenize", json={"model": "fake-llm", "prompt": "héllo", "return_token_strs": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["tokens"] == list("héllo".encode()) and body["count"] == 6 and body["max_model_len"] == 4096
    assert (await http.post("/detokenize", json={"model": "fake-llm", "tokens": body["tokens"]})).json() == {"prompt": "héllo"}
    chat = await http.post("/v1/tokenize", json={"model": "fake-llm", "messages": [{"role": "user", "content": "hi"}]})
    assert chat.json()["tokens"] == list(b"user: hi\nassistant: ")
    with_tools = await http.post(
        "/tokenize",
        json={"model": "fake-llm", "messages": [{"role": "user", "content": "hi"}],
              "tools": [{"type": "function", "function": {"name": "get_weather"}}]},
    )
    assert with_tools.json()["count"] > chat.json()["count"]  # the tools are part of the prompt
    bad = await http.post("/detokenize", json={"model": "fake-llm", "tokens": [999]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "tokens"
    both = await http.post("/tokenize", json={"model": "fake-llm", "prompt": "a", "messages": [{"role": "user", "content": "b"}]})
    assert both.status_code == 400
