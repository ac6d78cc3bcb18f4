"""The OpenAI wire protocol: request models, response builders, error conversion.

Request models mirror ``CreateChatCompletionRequest``, ``CreateCompletionRequest``,
``CreateEmbeddingRequest``, ``CreateTranscriptionRequest`` and ``CreateTranslationRequest`` of the official spec (``../shared/openai-openapi.yaml``): the same
names, types and bounds. Unknown fields are rejected (OpenAI does the same), and fields the spec
defines that this server cannot honour are rejected with a 400 naming them rather than ignored.
Fields marked *extra* are local extensions that vLLM's server also accepts.

Responses are built as plain dicts, in the field order of OpenAI's docs, because they sit on the
streaming hot path; their shapes are checked against the spec in ``tests/test_spec.py``.

This module imports neither torch, vLLM nor Ray.
"""

from __future__ import annotations

import base64
import functools
import time
import uuid
from typing import Annotated, Any, Literal, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, field_validator, model_validator

from deployments.errors import APIError, ErrorKind, invalid, unsupported

# Local bounds (OpenAI allows 128 choices; on two cores more than this is a denial of service).
MAX_N = 16
MAX_STOP = 4
MAX_EMBEDDING_INPUTS = 2048


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


# --------------------------------------------------------------------------- chat messages
class TextPart(_Request):
    type: Literal["text"]
    text: str


Content = Union[str, Annotated[list[TextPart], Field(min_length=1)]]


class SystemMessage(_Request):
    role: Literal["system", "developer"]
    content: Content
    name: str | None = None


class UserMessage(_Request):
    role: Literal["user"]
    content: Content
    name: str | None = None


FUNCTION_NAME = r"^[a-zA-Z0-9_-]{1,64}$"


class FunctionCall(_Request):
    name: str
    arguments: str = Field(description="JSON text of the arguments object")


class ToolCallIn(_Request):
    """A call the assistant made earlier, sent back in the conversation."""

    id: str
    type: Literal["function"]
    function: FunctionCall


class AssistantMessage(_Request):
    role: Literal["assistant"]
    content: Content | None = None
    name: str | None = None
    refusal: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    annotations: list[Any] | None = None  # of an answer sent back as it came: output-only, no effect
    function_call: FunctionCall | None = None  # deprecated form of one tool call (see with_tool_calls)
    audio: Any = None  # rejected by the request's check


class ToolMessage(_Request):
    role: Literal["tool"]
    content: Content
    tool_call_id: str


class FunctionMessage(_Request):
    """A function's result in the deprecated form (``ChatCompletionRequestFunctionMessage``)."""

    role: Literal["function"]
    content: str | None
    name: str


ChatMessage = Annotated[
    Union[SystemMessage, UserMessage, AssistantMessage, ToolMessage, FunctionMessage], Field(discriminator="role")
]


def with_tool_calls(messages: list) -> list:
    """The conversation with its deprecated parts in today's terms: an assistant's
    ``function_call`` becomes its one tool call, and a ``role: "function"`` result the tool result
    of the latest call of that function before it. The old form has no call ids; they are made
    from the message's position (``call_<index>``), the same for the same conversation."""
    out, latest = [], {}  # function name -> id of its latest call
    for i, m in enumerate(messages):
        if isinstance(m, AssistantMessage) and m.function_call is not None:
            if m.tool_calls:
                raise invalid("An assistant message has tool_calls or the deprecated function_call, not both.", f"messages[{i}].function_call")
            call = ToolCallIn(id=f"call_{i}", type="function", function=m.function_call)
            m = m.model_copy(update={"tool_calls": [call], "function_call": None})
        elif isinstance(m, FunctionMessage):
            m = ToolMessage(role="tool", content=m.content or "", tool_call_id=latest.get(m.name, f"call_{m.name}"))
        latest.update((c.function.name, c.id) for c in getattr(m, "tool_calls", None) or [])
        out.append(m)
    return out


def check_json_schema(schema: dict[str, Any]) -> None:
    """Raise ValueError unless ``schema`` is a valid JSON schema (Draft 2020-12)."""
    import jsonschema

    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise ValueError(f"not a valid JSON schema: {exc.message}") from exc


def _schema_or_none(value: dict[str, Any] | None) -> dict[str, Any] | None:
    if value is not None:
        check_json_schema(value)
    return value


#: a JSON schema given in a request (tool parameters, a response format), checked on arrival
JsonSchema = Annotated[dict[str, Any], AfterValidator(_schema_or_none)]


class FunctionSpec(_Request):
    """A function the model may call; as such, the deprecated ``functions`` item (``ChatCompletionFunctions``)."""

    name: str = Field(pattern=FUNCTION_NAME)
    description: str | None = None
    parameters: JsonSchema | None = None


class FunctionDefinition(FunctionSpec):
    strict: bool | None = None


class FunctionTool(_Request):
    type: Literal["function"]
    function: FunctionDefinition


def tool_dicts(tools: list[FunctionTool] | None) -> list[dict[str, Any]]:
    """Tools as plain dicts (what chat templates and prompts take)."""
    return [t.model_dump(exclude_none=True) for t in tools or []]


class FunctionName(_Request):
    name: str


class NamedToolChoice(_Request):
    type: Literal["function"]
    function: FunctionName


ToolChoice = Union[Literal["none", "auto", "required"], NamedToolChoice]


class JsonSchemaFormat(_Request):
    name: str = Field(pattern=FUNCTION_NAME)
    description: str | None = None
    schema_: JsonSchema | None = Field(None, alias="schema")
    strict: bool | None = None


class TextFormat(_Request):
    type: Literal["text"]


class JsonObjectFormat(_Request):
    type: Literal["json_object"]


class JsonSchemaResponseFormat(_Request):
    type: Literal["json_schema"]
    json_schema: JsonSchemaFormat


ResponseFormat = Annotated[Union[TextFormat, JsonObjectFormat, JsonSchemaResponseFormat], Field(discriminator="type")]

#: what ``{"type": "json_object"}`` asks for: some JSON object
ANY_JSON_OBJECT: dict[str, Any] = {"type": "object"}


def message_text(content: Content | None) -> str:
    """The text of a message's content, joining text parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.text for part in content)


class StreamOptions(_Request):
    include_usage: bool | None = None
    include_obfuscation: bool | None = None


Stop = Union[str, Annotated[list[str], Field(min_length=1, max_length=MAX_STOP)], None]


# --------------------------------------------------------------------------- sampling fields
class _Sampling(_Request):
    """Fields shared by chat and legacy completions, with the spec's bounds."""

    model: str = Field(description="Id of a model listed by GET /v1/models.", examples=["smollm2-135m-instruct"])
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    n: int | None = Field(None, ge=1, le=MAX_N)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    stop: Stop = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, int] | None = None
    seed: int | None = Field(None, ge=-(2**63), lt=2**63)
    user: str | None = None
    # extras (vLLM's names)
    top_k: int | None = Field(None, ge=-1, description="extra: sample from the k likeliest tokens")
    min_p: float | None = Field(None, ge=0, le=1, description="extra: drop tokens below min_p * top")
    repetition_penalty: float | None = Field(None, gt=0, le=2, description="extra: HF-style")
    min_tokens: int | None = Field(None, ge=0, description="extra: suppress EOS before this many")
    ignore_eos: bool | None = Field(None, description="extra: keep generating past EOS")
    stop_token_ids: list[int] | None = Field(None, description="extra: token ids that stop")

    @field_validator("logit_bias")
    @classmethod
    def _check_bias(cls, value: dict[str, int] | None) -> dict[str, int] | None:
        for key, bias in (value or {}).items():
            if not key.lstrip("-").isdigit():
                raise ValueError(f"keys must be token ids, got {key!r}")
            if not -100 <= bias <= 100:
                raise ValueError(f"bias for token {key} must be in [-100, 100], got {bias}")
        return value

    @model_validator(mode="after")
    def _check_stream_options(self):
        if self.stream_options is not None and not self.stream:
            raise invalid("stream_options is only allowed when stream is true.", "stream_options")
        return self

    @property
    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(_Sampling):
    """``POST /v1/chat/completions`` (``CreateChatCompletionRequest``)."""

    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_tokens: int | None = Field(None, ge=1, description="deprecated alias of max_completion_tokens")
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    response_format: ResponseFormat | None = None
    tools: Annotated[list[FunctionTool], Field(max_length=128)] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    # Spec fields this server accepts and has no use for: they change nothing in the answer.
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    # The deprecated form of tools and tool_choice: mapped onto them (see _map_functions), and
    # answered in that form (message.function_call, finish_reason "function_call").
    functions: Annotated[list[FunctionSpec], Field(min_length=1, max_length=128)] | None = None
    function_call: Union[Literal["none", "auto"], FunctionName] | None = None
    # Spec fields not supported; kept here so the 400 names them instead of "extra field".
    audio: Any = None
    modalities: list[str] | None = None
    prediction: Any = None
    reasoning_effort: str | None = None
    verbosity: str | None = None
    web_search_options: Any = None

    @model_validator(mode="after")
    def _check_chat(self):
        for name in ("audio", "prediction", "web_search_options"):
            if getattr(self, name):
                raise unsupported(name)
        if self.modalities not in (None, ["text"]):
            raise unsupported("modalities", "only ['text'] is served")
        for i, m in enumerate(self.messages):
            if isinstance(m, AssistantMessage) and m.audio:
                raise unsupported(f"messages[{i}].audio")
        self.messages = with_tool_calls(self.messages)
        self._map_functions()
        self._check_tools()
        if self.top_logprobs and not self.logprobs:
            raise invalid("top_logprobs requires logprobs to be true.", "top_logprobs")
        if self.max_tokens and self.max_completion_tokens and self.max_tokens != self.max_completion_tokens:
            raise invalid(
                "Give max_completion_tokens or its deprecated alias max_tokens, not both.",
                "max_tokens",
            )
        return self

    @property
    def uses_functions(self) -> bool:
        """Whether the request is in the deprecated form (``functions``), and so is its answer."""
        return self.functions is not None

    def param_name(self, name: str) -> str:
        """What the request calls ``tools`` or ``tool_choice``: in the deprecated form, ``functions``
        and ``function_call`` (errors name the parameter the client sent)."""
        return _DEPRECATED_NAMES.get(name, name) if self.uses_functions else name

    def _map_functions(self) -> None:
        """``functions`` / ``function_call`` as ``tools`` / ``tool_choice``. The deprecated form
        makes one call at most, so parallel calls are off."""
        if not self.uses_functions:
            if self.function_call not in (None, "none"):
                raise invalid("function_call is only allowed when functions are given.", "function_call")
            return
        if self.tools is not None:
            raise invalid("functions is the deprecated form of tools: give one or the other, not both.", "functions")
        if self.tool_choice is not None:
            raise invalid("tool_choice goes with tools; with the deprecated functions, use function_call.", "tool_choice")
        if self.parallel_tool_calls:
            raise invalid("The deprecated functions make one call at most: parallel_tool_calls cannot be true.", "parallel_tool_calls")
        self.tools = [FunctionTool(type="function", function=FunctionDefinition(**f.model_dump(exclude_none=True))) for f in self.functions]
        choice = self.function_call or "auto"
        self.tool_choice = NamedToolChoice(type="function", function=choice) if isinstance(choice, FunctionName) else choice
        self.parallel_tool_calls = False

    def _check_tools(self) -> None:
        names = [t.function.name for t in self.tools or []]
        tools_, choice = self.param_name("tools"), self.param_name("tool_choice")
        if len(set(names)) != len(names):
            raise invalid("Tool function names must be unique.", tools_)
        if self.tool_choice is not None and self.tool_choice != "none" and not self.tools:
            raise invalid("tool_choice is only allowed when tools are given.", "tool_choice")
        if isinstance(self.tool_choice, NamedToolChoice) and self.tool_choice.function.name not in names:
            raise invalid(f"{choice} names the function '{self.tool_choice.function.name}', which is not among {tools_}.", choice)
        if self.parallel_tool_calls is not None and not self.tools:
            raise invalid("parallel_tool_calls is only allowed when tools are given.", "parallel_tool_calls")
        if self.tools and self.response_format is not None and self.response_format.type != "text" and self.tool_choice != "none":
            raise unsupported("response_format", "a JSON response_format together with tools is not served; use one or the other")

    @property
    def max_new_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    @property
    def tool_dicts(self) -> list[dict[str, Any]]:
        return tool_dicts(self.tools)

    @property
    def json_schema(self) -> dict[str, Any] | None:
        """The JSON schema ``response_format`` asks the output to follow, if any."""
        rf = self.response_format
        if isinstance(rf, JsonObjectFormat):
            return ANY_JSON_OBJECT
        if isinstance(rf, JsonSchemaResponseFormat):
            return rf.json_schema.schema_ or ANY_JSON_OBJECT
        return None


#: today's names of the deprecated tool parameters -> the deprecated ones
_DEPRECATED_NAMES = {"tools": "functions", "tool_choice": "function_call"}


Prompt = Union[
    str,
    Annotated[list[str], Field(min_length=1)],
    Annotated[list[int], Field(min_length=1)],
    Annotated[list[Annotated[list[int], Field(min_length=1)]], Field(min_length=1)],
]


class CompletionRequest(_Sampling):
    """``POST /v1/completions`` (``CreateCompletionRequest``)."""

    prompt: Prompt
    max_tokens: int | None = Field(16, ge=0)
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: bool | None = False
    best_of: int | None = Field(None, ge=0, le=20)
    suffix: str | None = None

    @model_validator(mode="after")
    def _check_completion(self):
        if self.suffix:
            raise unsupported("suffix", "the served models have no fill-in-the-middle mode")
        if self.best_of is not None:
            if self.best_of < (self.n or 1):
                raise invalid(f"best_of ({self.best_of}) must be at least n ({self.n or 1}).", "best_of")
            if self.best_of > MAX_N:
                raise invalid(f"best_of is at most {MAX_N} on this server.", "best_of")
            if self.stream and self.best_of > (self.n or 1):
                raise invalid("best_of greater than n cannot be streamed.", "best_of")
        if self.echo and self.stream:
            raise unsupported("echo", "echo is not available with stream")
        return self

    def prompts(self) -> list[str | list[int]]:
        """The prompt as a list of independent prompts (text or token ids)."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if p and isinstance(p[0], int):
            return [list(p)]  # type: ignore[arg-type]
        return list(p)  # type: ignore[arg-type]


EmbeddingInput = Union[
    str,
    Annotated[list[str], Field(min_length=1, max_length=MAX_EMBEDDING_INPUTS)],
    Annotated[list[int], Field(min_length=1)],
    Annotated[list[Annotated[list[int], Field(min_length=1)]], Field(min_length=1, max_length=MAX_EMBEDDING_INPUTS)],
]


class EmbeddingRequest(_Request):
    """``POST /v1/embeddings`` (``CreateEmbeddingRequest``)."""

    model: str = Field(description="Id of an embedding model listed by GET /v1/models.", examples=["all-minilm-l6-v2"])
    input: EmbeddingInput
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None

    @field_validator("input")
    @classmethod
    def _no_empty_strings(cls, value):
        items = [value] if isinstance(value, str) else value
        for i, item in enumerate(items):
            if isinstance(item, str) and item == "":
                raise ValueError(f"input[{i}] is an empty string; embeddings need some text")
        return value

    def inputs(self) -> list[str | list[int]]:
        v = self.input
        if isinstance(v, str):
            return [v]
        if v and isinstance(v[0], int):
            return [list(v)]  # type: ignore[arg-type]
        return list(v)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- audio
AudioResponseFormat = Literal["json", "text", "srt", "verbose_json", "vtt"]


class TranslationRequest(_Request):
    """``POST /v1/audio/translations`` (``CreateTranslationRequest``), the multipart form's fields
    but ``file`` (the audio travels beside the request)."""

    model: str = Field(description="Id of a speech-to-text model listed by GET /v1/models.", examples=["whisper-tiny-en"])
    prompt: str | None = None
    response_format: AudioResponseFormat | Literal["diarized_json"] = "json"
    temperature: float = Field(0.0, ge=0, le=1)

    @field_validator("response_format")
    @classmethod
    def _no_diarization(cls, value):
        if value == "diarized_json":
            raise unsupported("response_format", "diarized_json needs a diarization model; use json, text, srt, verbose_json or vtt")
        return value


class TranscriptionRequest(TranslationRequest):
    """``POST /v1/audio/transcriptions`` (``CreateTranscriptionRequest``), as above."""

    language: str | None = Field(None, description="ISO-639-1 code of the audio's language (default: detected).")
    timestamp_granularities: list[Literal["word", "segment"]] | None = Field(None, min_length=1)
    stream: bool | None = False
    include: list[str] | None = None
    chunking_strategy: str | None = None

    @field_validator("include")
    @classmethod
    def _no_include(cls, value):
        if value:
            raise unsupported("include", "Whisper models give no token logprobs")
        return value

    @field_validator("chunking_strategy")
    @classmethod
    def _no_chunking(cls, value):
        if value is not None:
            raise unsupported("chunking_strategy", "audio is decoded in Whisper's own 30-second windows")
        return value

    @model_validator(mode="after")
    def _consistent(self):
        if self.timestamp_granularities and self.response_format != "verbose_json":
            raise invalid("timestamp_granularities needs response_format 'verbose_json'.", "timestamp_granularities")
        if self.stream and self.response_format not in ("json", "text"):
            raise invalid(
                f"stream=true gives transcript.text.* events; response_format '{self.response_format}' cannot be streamed "
                "(use json or text).",
                "stream",
            )
        return self


# --------------------------------------------------------------------------- Responses API
class InputText(_Request):
    type: Literal["input_text", "output_text"]
    text: str
    annotations: list[Any] | None = None  # output_text echoed back from an earlier response
    logprobs: list[Any] | None = None


class InputMessage(_Request):
    """``EasyInputMessage`` / ``InputMessage``: a message in a response's input."""

    type: Literal["message"] | None = None
    role: Literal["user", "assistant", "system", "developer"]
    content: Union[str, Annotated[list[InputText], Field(min_length=1)]]
    id: str | None = None  # an earlier output message echoed back
    status: str | None = None


class FunctionCallItem(_Request):
    """A ``function_call`` output item of an earlier response, sent back as input."""

    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str
    id: str | None = None
    status: str | None = None


class FunctionCallOutputItem(_Request):
    type: Literal["function_call_output"]
    call_id: str
    output: str
    id: str | None = None
    status: str | None = None


def _item_kind(value: Any) -> str:
    return value.get("type") or "message" if isinstance(value, dict) else getattr(value, "type", None) or "message"


InputItem = Annotated[
    Union[
        Annotated[InputMessage, Tag("message")],
        Annotated[FunctionCallItem, Tag("function_call")],
        Annotated[FunctionCallOutputItem, Tag("function_call_output")],
    ],
    Discriminator(_item_kind),
]


class ResponsesFunctionTool(FunctionDefinition):
    """The Responses API's flat function tool: a function definition with ``type``."""

    type: Literal["function"]


class ResponsesNamedTool(_Request):
    type: Literal["function"]
    name: str


class ResponsesJsonSchemaFormat(JsonSchemaFormat):
    """The Responses API's flat ``text.format`` for a JSON schema."""

    type: Literal["json_schema"]
    schema_: JsonSchema = Field(alias="schema")


class ResponsesText(_Request):
    format: Annotated[Union[TextFormat, JsonObjectFormat, ResponsesJsonSchemaFormat], Field(discriminator="type")] | None = None
    verbosity: str | None = None


class ResponsesStreamOptions(_Request):
    include_obfuscation: bool | None = None


class ResponsesRequest(_Request):
    """``POST /v1/responses`` (``CreateResponse``): text or message input, instructions, function
    tools, structured text, streaming, and ``previous_response_id`` chains."""

    model: str = Field(description="Id of a chat model listed by GET /v1/models.", examples=["smollm2-135m-instruct"])
    input: Union[str, Annotated[list[InputItem], Field(min_length=1)]]
    instructions: str | None = None
    previous_response_id: str | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: Annotated[list[ResponsesFunctionTool], Field(max_length=128)] | None = None
    tool_choice: Union[Literal["none", "auto", "required"], ResponsesNamedTool] | None = None
    parallel_tool_calls: bool | None = None
    text: ResponsesText | None = None
    stream: bool | None = False
    stream_options: ResponsesStreamOptions | None = None
    store: bool | None = True
    metadata: dict[str, str] | None = None
    user: str | None = None
    truncation: Literal["disabled", "auto"] | None = None
    # accepted, no effect on the answer
    service_tier: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    # spec fields not served: the 400 names them
    background: bool | None = None
    conversation: Any = None
    include: list[str] | None = None
    max_tool_calls: int | None = None
    prompt: Any = None
    reasoning: Any = None
    context_management: Any = None
    moderation: Any = None
    prompt_cache_options: Any = None

    @model_validator(mode="after")
    def _check(self):
        for name in ("background", "conversation", "include", "max_tool_calls", "prompt", "reasoning", "context_management", "moderation", "prompt_cache_options"):
            if getattr(self, name):
                raise unsupported(name)
        if self.truncation == "auto":
            raise unsupported("truncation", "only 'disabled' is served: a too-long input is a 400")
        if self.stream_options is not None and not self.stream:
            raise invalid("stream_options is only allowed when stream is true.", "stream_options")
        if self.text is not None and self.text.verbosity not in (None, "medium"):
            raise unsupported("text.verbosity")
        return self


# --------------------------------------------------------------------------- tokenizer routes
class TokenizeRequest(_Request):
    """``POST /tokenize`` (vLLM's extension): ``prompt`` text, or chat ``messages`` (and ``tools``)
    rendered by the model's chat template."""

    model: str
    prompt: str | None = None
    messages: Annotated[list[ChatMessage], Field(min_length=1)] | None = None
    tools: list[FunctionTool] | None = None
    add_generation_prompt: bool = True
    return_token_strs: bool = False

    @property
    def tool_dicts(self) -> list[dict[str, Any]]:
        return tool_dicts(self.tools)

    @model_validator(mode="after")
    def _one_input(self):
        if (self.prompt is None) == (self.messages is None):
            raise invalid("Give either prompt or messages.", "prompt" if self.prompt is None else "messages")
        if self.tools and self.messages is None:
            raise invalid("tools are only used with messages.", "tools")
        if self.messages is not None:
            self.messages = with_tool_calls(self.messages)
        if not self.add_generation_prompt:
            raise unsupported("add_generation_prompt", "messages are rendered as a prompt for the assistant's answer")
        return self


class DetokenizeRequest(_Request):
    """``POST /detokenize``: token ids back to text."""

    model: str
    tokens: list[int]


# --------------------------------------------------------------------------- validation errors
def param_path(loc: tuple[Any, ...]) -> str | None:
    """``("messages", 0, "content")`` -> ``"messages[0].content"`` (OpenAI's notation).

    Pydantic adds the names of union members to the location (``str``, ``list[int]``,
    ``function-after[...]``); they are not request fields, so they are dropped.
    """
    out = ""
    for part in _path_parts(loc):
        out += f"[{part}]" if isinstance(part, int) else ("." if out else "") + part
    return out or None


# discriminated unions put the member's tag after the field name
_UNION_TAGS = {fmt: {"text", "json_object", "json_schema"} for fmt in ("response_format", "format")}


def _path_parts(loc: tuple[Any, ...]):
    previous: Any = None
    listed: Any = None  # the field an index indexes (messages in messages[0])
    for part in loc:
        tag = part in _UNION_TAGS.get(previous, ()) if isinstance(previous, str) else False
        item_tag = isinstance(previous, int) and listed in _ITEM_LISTS
        if isinstance(part, int) or (part != "body" and not tag and not _is_type_tag(part, after_item=item_tag)):
            yield part
        if isinstance(part, int):
            listed = previous
        previous = part


# lists of discriminated items: the member's tag (a message's role, an item's type) follows the index
_ITEM_LISTS = {"messages", "input"}
_ROLE_TAGS = {"system", "developer", "user", "assistant", "tool", "function", "message", "function_call", "function_call_output"}


@functools.cache
def _request_models() -> frozenset[str]:
    """The names of the request models: a union with a model puts the member's name in the location."""

    def names(cls: type) -> set[str]:
        return {cls.__name__}.union(*(names(sub) for sub in cls.__subclasses__()))

    return frozenset(names(_Request))


def _is_type_tag(part: str, after_item: bool) -> bool:
    return (
        part in ("str", "int", "float", "bool", "list", "dict", "none")
        or (after_item and part in _ROLE_TAGS)
        or part in _request_models()
        or "[" in part
        or part.startswith("function-")
    )


def validation_error(exc: ValidationError | list[dict[str, Any]]) -> APIError:
    """Turn pydantic's errors into one OpenAI 400 naming the first offending parameter.

    An :class:`APIError` raised inside a validator (unsupported parameter, cross-field rule)
    is passed through unchanged so its own kind, param and code survive.
    """
    errors = exc.errors() if isinstance(exc, ValidationError) else exc
    for err in errors:
        inner = (err.get("ctx") or {}).get("error")
        if isinstance(inner, APIError):
            return inner
    # A union reports one error per member. A broken rule (too long, out of range, missing) says
    # more than "not this member's type"; among equals, the deepest location is the most specific.
    first = max(
        errors,
        key=lambda e: (
            not str(e.get("type", "")).endswith(("_type", "_parsing")),
            sum(1 for _ in _path_parts(tuple(e.get("loc", ())))),
        ),
    )
    param = param_path(tuple(first.get("loc", ())))
    if first.get("type") == "json_invalid":
        return invalid("The request body is not valid JSON: " + str(first.get("msg")), None, "invalid_json")
    if first.get("type") == "extra_forbidden":
        return invalid(f"Unrecognized request argument supplied: {param}", param, "unknown_parameter")
    if first.get("type") == "missing":
        return invalid(f"Missing required parameter: '{param}'.", param, "missing_required_parameter")
    msg = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    return APIError(ErrorKind.INVALID_REQUEST, f"Invalid value for '{param}': {msg}", param=param, code="invalid_value")


# --------------------------------------------------------------------------- responses
def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def chat_completion(
    id: str, created: int, model: str, choices: list[dict[str, Any]], usage_: dict[str, int]
) -> dict[str, Any]:
    return {
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": choices,
        "usage": usage_,
    }


def chat_choice(
    index: int,
    text: str | None,
    finish_reason: str,
    logprobs: list | None,
    tool_calls: list[dict[str, Any]] | None = None,
    functions: bool = False,
) -> dict[str, Any]:
    """A finished choice. One that calls tools has them as ``tool_calls`` and finishes with
    ``tool_calls``; in the deprecated form (``functions``) its one call is ``function_call``."""
    message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None, "annotations": []}
    if tool_calls:
        if functions:
            message["function_call"] = tool_calls[0]["function"]
        else:
            message["tool_calls"] = tool_calls
        finish_reason = calls_finish_reason(functions)
    return {
        "index": index,
        "message": message,
        "logprobs": {"content": logprobs, "refusal": None} if logprobs is not None else None,
        "finish_reason": finish_reason,
    }


def chat_chunk(
    id: str, created: int, model: str, choices: list[dict[str, Any]], usage_: dict[str, int] | None = None
) -> dict[str, Any]:
    chunk: dict[str, Any] = {
        "id": id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": choices,
    }
    if usage_ is not None:
        chunk["usage"] = usage_
    return chunk


def chat_chunk_choice(
    index: int, delta: dict[str, Any], finish_reason: str | None = None, logprobs: list | None = None
) -> dict[str, Any]:
    return {
        "index": index,
        "delta": delta,
        "logprobs": {"content": logprobs, "refusal": None} if logprobs is not None else None,
        "finish_reason": finish_reason,
    }


def calls_finish_reason(functions: bool) -> str:
    """How a choice that calls tools finishes (``function_call`` in the deprecated form)."""
    return "function_call" if functions else "tool_calls"


def call_deltas(tool_calls: list[dict[str, Any]], functions: bool = False) -> list[dict[str, Any]]:
    """A choice's calls as streamed deltas: each call's id and name first, then its arguments.
    In the deprecated form, its one call as ``function_call``: the name, then the arguments."""
    if functions:
        call = tool_calls[0]["function"]
        return [{"function_call": {"name": call["name"], "arguments": ""}}, {"function_call": {"arguments": call["arguments"]}}]
    deltas = []
    for k, call in enumerate(tool_calls):
        head = {"index": k, "id": call["id"], "type": "function", "function": {"name": call["function"]["name"], "arguments": ""}}
        deltas.append({"tool_calls": [head]})
        deltas.append({"tool_calls": [{"index": k, "function": {"arguments": call["function"]["arguments"]}}]})
    return deltas


def text_completion(
    id: str, created: int, model: str, choices: list[dict[str, Any]], usage_: dict[str, int] | None
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": choices,
    }
    if usage_ is not None:
        out["usage"] = usage_
    return out


def completion_choice(index: int, text: str, finish_reason: str | None, logprobs: dict | None) -> dict[str, Any]:
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}


def embedding_list(model: str, vectors: list, encoding_format: str, prompt_tokens: int) -> dict[str, Any]:
    """``CreateEmbeddingResponse``; ``vectors`` are float32 numpy rows (or lists of floats)."""
    data = []
    for i, vec in enumerate(vectors):
        if encoding_format == "base64":
            embedding: Any = base64.b64encode(_float32_le_bytes(vec)).decode("ascii")
        else:
            embedding = [float(x) for x in vec]
        data.append({"object": "embedding", "index": i, "embedding": embedding})
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }


def _float32_le_bytes(vec) -> bytes:
    import array
    import sys

    if hasattr(vec, "astype"):
        return vec.astype("<f4").tobytes()
    arr = array.array("f", vec)
    if sys.byteorder != "little":
        arr.byteswap()
    return arr.tobytes()


def model_card(model_id: str, created: int, owned_by: str, **metadata: Any) -> dict[str, Any]:
    """``Model``, with local metadata (engine, capabilities, context length) beside it."""
    return {"id": model_id, "object": "model", "created": created, "owned_by": owned_by, **metadata}


def model_list(cards: list[dict[str, Any]]) -> dict[str, Any]:
    return {"object": "list", "data": cards}


# --------------------------------------------------------------------------- response schemas
# Pydantic models of what the routes return, for the OpenAPI document (/docs, /openapi.json, and
# schemathesis in the tests). The hot path builds plain dicts with the functions above; the tests
# check those against both these models (through the app's schema) and the official spec.
class _Response(BaseModel):
    model_config = ConfigDict(extra="allow")


class ErrorDetail(_Response):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(_Response):
    error: ErrorDetail


class ModelCard(_Response):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(_Response):
    object: Literal["list"]
    data: list[ModelCard]


class Usage(_Response):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class FunctionCallOut(_Response):
    name: str
    arguments: str


class ToolCallOut(_Response):
    id: str
    type: Literal["function"]
    function: FunctionCallOut


class AssistantMessageOut(_Response):
    role: Literal["assistant"]
    content: str | None
    refusal: str | None
    tool_calls: list[ToolCallOut] | None = None
    function_call: FunctionCallOut | None = None  # instead of tool_calls, when the request sent functions


class ChatChoiceOut(_Response):
    index: int
    message: AssistantMessageOut
    logprobs: dict[str, Any] | None
    finish_reason: Literal["stop", "length", "tool_calls", "content_filter", "function_call"]


class ChatCompletion(_Response):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoiceOut]
    usage: Usage


class CompletionChoiceOut(_Response):
    index: int
    text: str
    logprobs: dict[str, Any] | None
    finish_reason: Literal["stop", "length", "content_filter"] | None


class TextCompletion(_Response):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoiceOut]
    usage: Usage | None = None


class EmbeddingOut(_Response):
    object: Literal["embedding"]
    index: int
    embedding: list[float] | str


class EmbeddingUsage(_Response):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(_Response):
    object: Literal["list"]
    data: list[EmbeddingOut]
    model: str
    usage: EmbeddingUsage
