"""Tool calls as text: the parser, the streaming splitter and the forced-call schemas.

The end-to-end behaviour with real models is in tests/test_engines_graph.py and
tests/test_clients_graph.py; the ASGI tests at the
bottom drive the whole chat path on the fake engine, which answers with the last user message
reversed, so a reversed call in the question comes back as the model's call.
"""

from __future__ import annotations

import json

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deployments import tools

NAMES = {"get_weather", "get_time"}
CALL = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    },
    {"type": "function", "function": {"name": "get_time"}},
]


@pytest.mark.parametrize(
    "text, content, calls",
    [
        (CALL, "", [("get_weather", {"city": "Paris"})]),
        ("Let me look. " + CALL, "Let me look.", [("get_weather", {"city": "Paris"})]),
        (CALL + "\n" + CALL.replace("Paris", "Rome"), "", [("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Rome"})]),
        ('{"name": "get_time", "parameters": {}}', "", [("get_time", {})]),
        ('  [{"name": "get_time", "arguments": {}}, {"name": "get_weather", "arguments": "{\\"city\\": \\"Oslo\\"}"}]', "",
         [("get_time", {}), ("get_weather", {"city": "Oslo"})]),
        ("The weather is fine.", "The weather is fine.", []),
        ('{"name": "launch_rockets", "arguments": {}}', '{"name": "launch_rockets", "arguments": {}}', []),
        ("<tool_call>{broken</tool_call>", "<tool_call>{broken</tool_call>", []),
        ('{"answer": 42}', '{"answer": 42}', []),
    ],
)
def test_parse_finds_calls_of_known_tools_only(text, content, calls):
    got_content, got_calls = tools.parse(text, NAMES)
    assert got_content == content
    assert [(c.name, json.loads(c.arguments)) for c in got_calls] == calls
    assert len({c.id for c in got_calls}) == len(got_calls)
    assert all(c.id.startswith("call_") for c in got_calls)


def _stream(text: str, cuts: list[int]) -> tuple[str, str, list[tools.ToolCall]]:
    splitter = tools.StreamSplitter(NAMES)
    streamed, last = "", 0
    for cut in sorted(set(cuts)) + [len(text)]:
        streamed += splitter.feed(text[last:cut])
        last = cut
    rest, calls = splitter.finish()
    return streamed, rest, calls


@settings(max_examples=300, deadline=None)
@given(
    prefix=st.sampled_from(["", "Sure. ", "  ", "a < b, ", "<tool", "{not json"]),
    call=st.sampled_from([CALL, '{"name": "get_time", "arguments": {}}', ""]),
    cuts=st.lists(st.integers(0, 120), max_size=12),
)
def test_streaming_gives_what_parsing_the_whole_answer_gives(prefix, call, cuts):
    text = prefix + call
    streamed, rest, calls = _stream(text, [c for c in cuts if c <= len(text)])
    content, expected = tools.parse(text, NAMES)
    assert [(c.name, c.arguments) for c in calls] == [(c.name, c.arguments) for c in expected]
    if expected:
        assert (streamed + rest).strip() == content
    else:
        assert streamed + rest == text  # no call: the client gets exactly what the model wrote


def test_plain_text_streams_without_waiting_for_the_end():
    splitter = tools.StreamSplitter(NAMES)
    assert splitter.feed("The weather ") == "The weather "
    assert splitter.feed("is <to") == "is "  # may be the start of a call: held
    assert splitter.feed("day>") == "<today>"
    assert splitter.finish() == ("", [])


@pytest.mark.parametrize("named, parallel", [("get_weather", True), (None, False), (None, True)])
def test_forced_call_schemas_accept_calls_and_reject_others(named, parallel):
    schema = tools.call_schema(TOOLS, named, parallel)
    jsonschema.Draft202012Validator.check_schema(schema)
    call = {"name": "get_weather", "arguments": {"city": "Paris"}}
    valid = [call] if (parallel and not named) else call
    jsonschema.validate(valid, schema)
    parsed = tools._json_calls(json.dumps(valid), NAMES)
    assert parsed and parsed[0].name == "get_weather"
    bad = {"name": "get_weather", "arguments": {}}  # city is required
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate([bad] if (parallel and not named) else bad, schema)
    if named:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({"name": "get_time", "arguments": {}}, schema)


def test_an_earlier_call_is_written_back_as_the_model_writes_it():
    text = tools.call_text("get_weather", '{"city": "Paris"}')
    assert tools.parse(text, NAMES)[1][0].arguments == '{"city": "Paris"}'


# --------------------------------------------------------------------------- through the app
@pytest.fixture(scope="module")
async def tool_client():
    import httpx

    from deployments.api import create_app
    from deployments.routing import LLM, ModelRoute, Router
    from deployments.config import LLMConfig
    from deployments.engines.fake import FakeEngine
    from deployments.llm_server import LLMServer
    from tests.local import LocalHandle, construct

    llm = await construct(LLMServer, LLMConfig(id="fake-llm", source="unused", stream_interval_ms=0), FakeEngine(max_model_len=4096))
    app = create_app(Router([ModelRoute("fake-llm", LLM, LocalHandle(llm))]))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as c:
        yield c


def _asks_for(answer: str, **extra) -> dict:
    """A request the fake model answers with ``answer`` (it reverses the last user message)."""
    return {"model": "fake-llm", "messages": [{"role": "user", "content": answer[::-1]}], "tools": TOOLS, **extra}


async def test_a_call_in_the_answer_becomes_tool_calls(tool_client):
    from tests.spec import validate

    r = await tool_client.post("/v1/chat/completions", json=_asks_for("Checking. " + CALL))
    assert r.status_code == 200, r.text
    body = r.json()
    validate(body, "CreateChatCompletionResponse")
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "Checking."
    [call] = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}


async def test_streamed_calls_arrive_as_fragments_that_reassemble(tool_client):
    from tests.spec import validate

    r = await tool_client.post("/v1/chat/completions", json=_asks_for("Checking. " + CALL, stream=True))
    events = [json.loads(line[6:]) for line in r.text.split("\n\n") if line.startswith("data: {")]
    for event in events:
        validate(event, "CreateChatCompletionStreamResponse")
    deltas = [e["choices"][0]["delta"] for e in events if e["choices"]]
    content = "".join(d.get("content") or "" for d in deltas)
    fragments = [f for d in deltas for f in d.get("tool_calls", [])]
    assert content.strip() == "Checking."
    assert fragments[0]["id"].startswith("call_") and fragments[0]["function"] == {"name": "get_weather", "arguments": ""}
    arguments = "".join(f["function"].get("arguments", "") for f in fragments if f["index"] == 0)
    assert json.loads(arguments) == {"city": "Paris"}
    assert [e["choices"][0]["finish_reason"] for e in events if e["choices"] and e["choices"][0]["finish_reason"]] == ["tool_calls"]


WEATHER_CALL = {"name": "get_weather", "arguments": '{"city": "Paris"}'}
HISTORY = {  # a call and its result, in today's form and in the deprecated one
    "tools": [
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": WEATHER_CALL}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "22 C and sunny"},
    ],
    "functions": [
        {"role": "assistant", "content": None, "function_call": WEATHER_CALL},
        {"role": "function", "name": "get_weather", "content": "22 C and sunny"},
    ],
}


async def test_tool_results_are_accepted_back(tool_client):
    """Both forms of the history give the model the same prompt, and the answer after it."""
    prompts = []
    for form, defined in (("tools", TOOLS), ("functions", [t["function"] for t in TOOLS])):
        messages = [{"role": "user", "content": "weather in Paris?"}, *HISTORY[form], {"role": "user", "content": ".ynnus dna C 22"}]
        r = await tool_client.post("/v1/chat/completions", json={"model": "fake-llm", form: defined, "messages": messages})
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"] == {"role": "assistant", "content": "22 C and sunny.", "refusal": None, "annotations": []}
        prompts.append((await tool_client.post("/tokenize", json={"model": "fake-llm", "messages": messages})).json()["tokens"])
    assert prompts[0] == prompts[1]
    # ... and that prompt holds the call and its result (a history dropped on the way would not)
    text = (await tool_client.post("/detokenize", json={"model": "fake-llm", "tokens": prompts[0]})).json()["prompt"]
    assert "22 C and sunny" in text and "get_weather" in text, text
    bare = [{"role": "user", "content": "weather in Paris?"}, {"role": "user", "content": ".ynnus dna C 22"}]
    assert (await tool_client.post("/tokenize", json={"model": "fake-llm", "messages": bare})).json()["tokens"] != prompts[0]


async def test_forcing_a_call_needs_an_engine_that_constrains_output(tool_client):
    r = await tool_client.post("/v1/chat/completions", json=_asks_for("hi", tool_choice="required"))
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "tool_choice"
    r = await tool_client.post(
        "/v1/chat/completions",
        json={"model": "fake-llm", "messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_object"}},
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "response_format"


async def test_tool_choice_none_leaves_the_answer_as_text(tool_client):
    r = await tool_client.post("/v1/chat/completions", json=_asks_for(CALL, tool_choice="none"))
    assert r.json()["choices"][0]["message"]["content"] == CALL
    assert r.json()["choices"][0]["finish_reason"] == "stop"


# --------------------------------------------------------------------------- the deprecated form
FUNCTIONS = [t["function"] for t in TOOLS]


def _functions_ask(answer: str, **extra) -> dict:
    """As :func:`_asks_for`, in the deprecated form of ``openai<1`` clients."""
    return {"model": "fake-llm", "messages": [{"role": "user", "content": answer[::-1]}], "functions": FUNCTIONS, **extra}


def _events(text: str) -> list[dict]:
    return [json.loads(line[6:]) for line in text.split("\n\n") if line.startswith("data: {")]


async def test_functions_answer_with_one_function_call(tool_client):
    """The deprecated form has no parallel calls: a second call in the answer is dropped."""
    from tests.spec import validate

    r = await tool_client.post("/v1/chat/completions", json=_functions_ask("Checking. " + CALL + CALL.replace("Paris", "Rome")))
    assert r.status_code == 200, r.text
    body = r.json()
    validate(body, "CreateChatCompletionResponse")
    choice = body["choices"][0]
    assert choice["finish_reason"] == "function_call"
    assert choice["message"]["content"] == "Checking." and "tool_calls" not in choice["message"]
    assert choice["message"]["function_call"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}


async def test_functions_stream_function_call_fragments(tool_client):
    from tests.spec import validate

    r = await tool_client.post("/v1/chat/completions", json=_functions_ask(CALL, stream=True, stream_options={"include_usage": True}))
    events = _events(r.text)
    for event in events:
        validate(event, "CreateChatCompletionStreamResponse")
    deltas = [e["choices"][0]["delta"] for e in events if e["choices"]]
    fragments = [d["function_call"] for d in deltas if "function_call" in d]
    assert fragments[0] == {"name": "get_weather", "arguments": ""}  # the name first
    assert all("name" not in f for f in fragments[1:])
    assert json.loads("".join(f["arguments"] for f in fragments)) == {"city": "Paris"}
    assert not any("tool_calls" in d for d in deltas)
    assert [e["choices"][0]["finish_reason"] for e in events if e["choices"] and e["choices"][0]["finish_reason"]] == ["function_call"]
    assert events[-1]["usage"]["completion_tokens"] > 0


async def test_functions_plain_answers_and_function_call_none(tool_client):
    r = await tool_client.post("/v1/chat/completions", json=_functions_ask("The weather is fine."))
    assert r.json()["choices"][0]["message"] == {"role": "assistant", "content": "The weather is fine.", "refusal": None, "annotations": []}
    r = await tool_client.post("/v1/chat/completions", json=_functions_ask(CALL, function_call="none"))
    assert r.json()["choices"][0]["message"]["content"] == CALL
    assert r.json()["choices"][0]["finish_reason"] == "stop"


async def test_functions_errors_name_the_deprecated_parameter(tool_client):
    cases = [
        (_functions_ask("hi", tools=TOOLS), "functions"),
        (_functions_ask("hi", function_call={"name": "launch_rockets"}), "function_call"),
        (_functions_ask("hi", function_call={"name": "get_weather"}), "function_call"),  # this engine cannot constrain
    ]
    for body, param in cases:
        r = await tool_client.post("/v1/chat/completions", json=body)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


async def test_a_forced_function_call_is_constrained_to_its_schema():
    """``function_call: {"name": ...}`` takes the named-tool path: decoding follows the schema of
    one call of that function (on an engine that can constrain; this one records the schema)."""
    import httpx

    from deployments.api import create_app
    from deployments.routing import LLM, ModelRoute, Router
    from deployments.config import LLMConfig
    from deployments.engines.fake import FakeEngine
    from deployments.llm_server import LLMServer
    from tests.local import LocalHandle, construct
    from tests.spec import validate

    class Constraining(FakeEngine):
        structured_outputs = True
        schemas: list = []

        async def generate(self, request_id, prompt_token_ids, params, lora=None):
            self.schemas.append(params.json_schema)
            async for chunk in super().generate(request_id, prompt_token_ids, params, lora):
                yield chunk

        def check_structured(self, schema):
            pass

    engine = Constraining(script='{"name": "get_weather", "arguments": {"city": "Paris"}}', max_model_len=4096)
    llm = await construct(LLMServer, LLMConfig(id="fake-llm", source="unused", stream_interval_ms=0), engine)
    app = create_app(Router([ModelRoute("fake-llm", LLM, LocalHandle(llm))]))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as c:
        r = await c.post("/v1/chat/completions", json=_functions_ask("hi", function_call={"name": "get_weather"}))
        streamed = await c.post("/v1/chat/completions", json=_functions_ask("hi", function_call={"name": "get_weather"}, stream=True))
    assert engine.schemas == [tools.call_schema(TOOLS, "get_weather", parallel=False)] * 2
    body = r.json()
    validate(body, "CreateChatCompletionResponse")
    call = body["choices"][0]["message"]["function_call"]
    assert call["name"] == "get_weather" and body["choices"][0]["finish_reason"] == "function_call"
    jsonschema.validate(json.loads(call["arguments"]), FUNCTIONS[0]["parameters"])
    fragments = [e["choices"][0]["delta"].get("function_call") for e in _events(streamed.text) if e["choices"]]
    assert "".join(f["arguments"] for f in fragments if f) == call["arguments"]
