"""Unit tests: request validation, error bodies, SSE formatting, stop strings, detokenisation."""

from __future__ import annotations

import base64
import json
import pickle
import struct

import pytest
from pydantic import ValidationError

from deployments import protocol, sse
from deployments.engines.tokenizer import ByteTokenizer
from deployments.errors import APIError, ErrorKind
from deployments.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from deployments.text import IncrementalDetokenizer, StopChecker

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def error_for(model, payload) -> APIError:
    try:
        model.model_validate(payload)
    except ValidationError as exc:
        return protocol.validation_error(exc)
    except APIError as exc:
        return exc
    raise AssertionError(f"{payload} was accepted")


TOOL = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
}


@pytest.mark.parametrize(
    "change, param",
    [
        ({"temperature": 2.5}, "temperature"),
        ({"top_p": -0.1}, "top_p"),
        ({"n": 0}, "n"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_completion_tokens": "ten"}, "max_completion_tokens"),
        ({"presence_penalty": 3}, "presence_penalty"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"logit_bias": {"12": 101}}, "logit_bias"),
        ({"logit_bias": {"abc": 1}}, "logit_bias"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "user"}]}, "messages[0].content"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0]"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, "messages[0].content[0].type"),
        ({"frobnicate": True}, "frobnicate"),
        ({"tools": [{"type": "function", "function": {"name": "no spaces"}}]}, "tools[0].function.name"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": 5}}}]}, "tools[0].function.parameters"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"parallel_tool_calls": False}, "parallel_tool_calls"),
        ({"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "other"}}}, "tool_choice"),
        ({"tools": [TOOL], "tool_choice": {"type": "function"}}, "tool_choice.function"),
        ({"tools": [TOOL, TOOL]}, "tools"),
        ({"response_format": {"type": "xml"}}, "response_format"),
        ({"response_format": {"type": "json_schema", "json_schema": {"schema": {}}}}, "response_format.json_schema.name"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nope"}}}}, "response_format.json_schema.schema"),
        ({"messages": [{"role": "tool", "content": "22C"}]}, "messages[0].tool_call_id"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"top_logprobs": 2}, "top_logprobs"),
    ],
)
def test_chat_request_errors_name_the_parameter(change, param):
    error = error_for(ChatCompletionRequest, {**CHAT, **change})
    assert error.status == 400
    assert error.param == param
    body = error.body()["error"]
    assert set(body) == {"message", "type", "param", "code"}
    assert body["type"] == "invalid_request_error"


def test_unsupported_parameter_has_its_own_code():
    error = error_for(ChatCompletionRequest, {**CHAT, "modalities": ["text", "audio"]})
    assert error.code == "unsupported_parameter"
    assert "modalities" in error.message and "['text']" in error.message


# --------------------------------------------------------------------------- deprecated functions
FUNCTION = TOOL["function"]
CALLED = {"role": "assistant", "content": None, "function_call": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
RESULT = {"role": "function", "name": "get_weather", "content": "22 C"}


@pytest.mark.parametrize(
    "change, param",
    [
        ({"functions": [FUNCTION], "tools": [TOOL]}, "functions"),
        ({"functions": [FUNCTION], "tool_choice": "auto"}, "tool_choice"),
        ({"functions": [FUNCTION], "function_call": {"name": "other"}}, "function_call"),
        ({"functions": [FUNCTION], "function_call": "required"}, "function_call"),
        ({"functions": [FUNCTION], "function_call": {"function": "get_weather"}}, "function_call.name"),
        ({"functions": [FUNCTION], "parallel_tool_calls": True}, "parallel_tool_calls"),
        ({"functions": [FUNCTION, FUNCTION]}, "functions"),
        ({"functions": []}, "functions"),
        ({"functions": [{"name": "no spaces"}]}, "functions[0].name"),
        ({"functions": [{"name": "f", "parameters": {"type": 5}}]}, "functions[0].parameters"),
        ({"functions": [{**FUNCTION, "strict": True}]}, "functions[0].strict"),  # not in ChatCompletionFunctions
        ({"function_call": "auto"}, "function_call"),
        ({"tools": [TOOL], "function_call": {"name": "get_weather"}}, "function_call"),
        ({"messages": [{"role": "function", "content": "22 C"}]}, "messages[0].name"),
        ({"messages": [{"role": "function", "name": "f"}]}, "messages[0].content"),
        ({"messages": [{**CALLED, "function_call": {"name": "get_weather"}}]}, "messages[0].function_call.arguments"),
        ({"messages": [{**CALLED, "tool_calls": [{"id": "c", "type": "function", "function": CALLED["function_call"]}]}]},
         "messages[0].function_call"),
    ],
)
def test_deprecated_functions_errors_name_the_parameter(change, param):
    error = error_for(ChatCompletionRequest, {**CHAT, **change})
    assert (error.status, error.param) == (400, param), error.message


def test_deprecated_functions_become_tools_with_one_call_at_most():
    req = ChatCompletionRequest.model_validate({**CHAT, "functions": [FUNCTION], "function_call": {"name": "get_weather"}})
    assert req.uses_functions and req.tool_dicts == [TOOL]
    assert req.tool_choice == protocol.NamedToolChoice(type="function", function={"name": "get_weather"})
    assert req.parallel_tool_calls is False
    assert req.param_name("tool_choice") == "function_call" and req.param_name("tools") == "functions"
    assert pickle.loads(pickle.dumps(req)).uses_functions  # as it travels to a model's replica
    for given, choice in ((None, "auto"), ("auto", "auto"), ("none", "none")):
        extra = {} if given is None else {"function_call": given}
        assert ChatCompletionRequest.model_validate({**CHAT, "functions": [FUNCTION], **extra}).tool_choice == choice
    plain = ChatCompletionRequest.model_validate({**CHAT, "tools": [TOOL], "function_call": "none"})
    assert not plain.uses_functions and plain.param_name("tool_choice") == "tool_choice"


def test_deprecated_history_reads_as_tool_calls_and_results():
    """An old-style loop (call, function result, call, result) is the same conversation as its
    tool-call form, with ids made from the calls' positions."""
    old = [CHAT["messages"][0], CALLED, RESULT, {**CALLED, "content": "Again."}, {**RESULT, "content": None}]
    req = ChatCompletionRequest.model_validate({**CHAT, "messages": old, "functions": [FUNCTION]})
    call = {"type": "function", "function": CALLED["function_call"]}
    new = [
        CHAT["messages"][0],
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", **call}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "22 C"},
        {"role": "assistant", "content": "Again.", "tool_calls": [{"id": "call_3", **call}]},
        {"role": "tool", "tool_call_id": "call_3", "content": ""},
    ]
    assert req.messages == ChatCompletionRequest.model_validate({**CHAT, "messages": new, "tools": [TOOL]}).messages
    tokenize = protocol.TokenizeRequest.model_validate({"model": "m", "messages": old})
    assert tokenize.messages == req.messages
    mixed = [CHAT["messages"][0], new[1] | {"tool_calls": [{"id": "abc", **call}]}, RESULT]  # a result by name
    assert ChatCompletionRequest.model_validate({**CHAT, "messages": mixed}).messages[2].tool_call_id == "abc"


def test_tools_and_formats_parse_into_what_the_model_server_uses():
    req = ChatCompletionRequest.model_validate(
        {**CHAT, "tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}
    )
    assert req.tool_dicts == [TOOL] and req.json_schema is None
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    req = ChatCompletionRequest.model_validate(
        {**CHAT, "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": True}}}
    )
    assert req.json_schema == schema
    req = ChatCompletionRequest.model_validate({**CHAT, "response_format": {"type": "json_object"}})
    assert req.json_schema == {"type": "object"}


def test_missing_model_is_named():
    error = error_for(ChatCompletionRequest, {"messages": CHAT["messages"]})
    assert error.param == "model" and error.code == "missing_required_parameter"


def test_top_level_user_field_is_a_parameter_not_a_role_tag():
    error = error_for(ChatCompletionRequest, {**CHAT, "user": 5})
    assert error.param == "user"


def test_valid_chat_request_keeps_values():
    req = ChatCompletionRequest.model_validate(
        {**CHAT, "stop": "x", "max_completion_tokens": 5, "stream": True, "stream_options": {"include_usage": True}}
    )
    assert req.stop_list == ["x"] and req.max_new_tokens == 5 and req.include_usage


def test_content_parts_are_joined():
    req = ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]}
    )
    assert protocol.message_text(req.messages[0].content) == "ab"


def test_completion_prompt_forms():
    assert CompletionRequest(model="m", prompt="x").prompts() == ["x"]
    assert CompletionRequest(model="m", prompt=["x", "y"]).prompts() == ["x", "y"]
    assert CompletionRequest(model="m", prompt=[1, 2]).prompts() == [[1, 2]]
    assert CompletionRequest(model="m", prompt=[[1], [2, 3]]).prompts() == [[1], [2, 3]]
    assert error_for(CompletionRequest, {"model": "m", "prompt": "x", "suffix": "y"}).param == "suffix"


def test_embedding_inputs_and_errors():
    assert EmbeddingRequest(model="m", input="a").inputs() == ["a"]
    assert EmbeddingRequest(model="m", input=["a", "b"]).inputs() == ["a", "b"]
    assert error_for(EmbeddingRequest, {"model": "m", "input": ""}).param == "input"
    assert error_for(EmbeddingRequest, {"model": "m", "input": "a", "encoding_format": "hex"}).param == "encoding_format"


def test_api_error_survives_pickling_with_all_fields():
    error = APIError(ErrorKind.RATE_LIMITED, "slow down", param="model", retry_after=3)
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.kind, copy.message, copy.param, copy.code, copy.headers()) == (
        ErrorKind.RATE_LIMITED, "slow down", "model", "rate_limit_exceeded", {"Retry-After": "3"}
    )


# What OpenAI's API answers for each status (its error guide and the official clients' error
# classes), written out here apart from the table under test.
OPENAI_TYPES = {
    400: {"invalid_request_error"},
    401: {"authentication_error"},
    403: {"permission_error"},
    404: {"invalid_request_error"},
    405: {"invalid_request_error"},
    413: {"invalid_request_error"},
    429: {"rate_limit_error", "requests", "tokens"},
    500: {"server_error"},
    503: {"service_unavailable_error"},
}


def test_each_error_kind_has_the_status_and_type_openai_gives_it():
    for kind in ErrorKind:
        assert kind.type in OPENAI_TYPES[kind.status], kind
        body = APIError(kind, "m", param="p").body()["error"]
        assert body["type"] == kind.type and body["param"] == "p" and body["message"] == "m"
        assert APIError(kind, "m").status == kind.status
    # kinds sharing a status and type stay apart (their members are not aliases of each other)
    assert ErrorKind.UNSUPPORTED_PARAMETER is not ErrorKind.INVALID_REQUEST
    assert len(set(ErrorKind)) == len(ErrorKind.__members__)


def test_sse_event_and_done():
    text = sse.event({"a": "é"})
    assert text == 'data: {"a":"é"}\n\n'
    assert sse.error_then_done({"error": {"message": "x"}}).endswith("data: [DONE]\n\n")
    assert json.loads(text[len("data: "):]) == {"a": "é"}


def test_base64_embeddings_are_little_endian_float32():
    out = protocol.embedding_list("m", [[1.0, -2.5]], "base64", 3)
    raw = base64.b64decode(out["data"][0]["embedding"])
    assert struct.unpack("<2f", raw) == (1.0, -2.5)
    assert out["usage"] == {"prompt_tokens": 3, "total_tokens": 3}


# --------------------------------------------------------------------------- stop strings
def run_stops(stops, deltas):
    checker = StopChecker(stops)
    out, stopped = "", False
    for d in deltas:
        emit, stopped = checker.feed(d)
        out += emit
        if stopped:
            return out, True
    return out + checker.flush(), False


@pytest.mark.parametrize(
    "stops, deltas, expected",
    [
        (["END"], ["hello E", "N", "D and more"], ("hello ", True)),
        (["END"], ["hello EN", "X"], ("hello ENX", False)),
        (["\n\n", "###"], ["a\n", "\nb"], ("a", True)),
        (["###"], ["a#", "#", "b"], ("a##b", False)),
        (["ab", "b"], ["xab"], ("x", True)),
        # the first stop to complete wins, however the text is chunked (found by hypothesis)
        (["\n", "X\nX"], ["X\n", "X"], ("X", True)),
        (["\n", "X\nX"], ["X\nX"], ("X", True)),
        ([], ["free", "text"], ("freetext", False)),
    ],
)
def test_stop_strings_across_chunk_boundaries(stops, deltas, expected):
    assert run_stops(stops, deltas) == expected


def test_stop_checker_holds_back_only_possible_prefixes():
    checker = StopChecker(["STOP"])
    assert checker.feed("abc ST") == ("abc ", False)
    assert checker.pending == "ST"


# --------------------------------------------------------------------------- detokeniser
def test_incremental_detokenizer_waits_for_whole_characters():
    tok = ByteTokenizer()
    detok = IncrementalDetokenizer(tok)
    ids = tok.encode("Paris → é")
    pieces = [detok.add([i]) for i in ids]
    assert "".join(pieces) + detok.flush() == "Paris → é"
    assert all("\ufffd" not in p for p in pieces)
    # the arrow is 3 bytes: nothing is emitted for its first two
    arrow = ids.index(0xE2)
    assert pieces[arrow] == "" and pieces[arrow + 1] == "" and pieces[arrow + 2] == "→"


@pytest.mark.parametrize(
    "change",
    [{"n": 3, "best_of": 2}, {"best_of": 17}, {"best_of": 3, "stream": True}],
)
def test_best_of_limits_name_best_of(change):
    error = error_for(CompletionRequest, {"model": "m", "prompt": "x", **change})
    assert error.status == 400 and error.param == "best_of"
