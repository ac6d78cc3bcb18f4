"""The OpenAI wire protocol: request models, response builders, error conversion.

Request models mirror ``CreateChatCompletionRequest``, ``CreateCompletionRequest`` and
``CreateEmbeddingRequest`` of the official spec (``../shared/openai-openapi.yaml``): the same
names, types and bounds. Unknown fields are rejected (OpenAI does the same), and fields the spec
defines that this server cannot honour are rejected with a 400 naming them rather than ignored.
Fields marked *extra* are local extensions that vLLM's server also accepts.

Responses are built as plain dicts, in the field order of OpenAI's docs, because they sit on the
streaming hot path; their shapes are checked against the spec in ``tests/test_spec.py``.

This module imports neither torch, vLLM nor Ray.
"""

from __future__ import annotations

import base64
import time
import uuid
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

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


class AssistantMessage(_Request):
    role: Literal["assistant"]
    content: Content | None = None
    name: str | None = None
    refusal: str | None = None


ChatMessage = Annotated[
    Union[SystemMessage, UserMessage, AssistantMessage], Field(discriminator="role")
]


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
    response_format: dict[str, Any] | None = None
    # Spec fields this server accepts and has no use for: they change nothing in the answer.
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    # Spec fields not supported yet; kept here so the 400 names them instead of "extra field".
    tools: list[Any] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    functions: list[Any] | None = None
    function_call: Any = None
    audio: Any = None
    modalities: list[str] | None = None
    prediction: Any = None
    reasoning_effort: str | None = None
    verbosity: str | None = None
    web_search_options: Any = None

    @model_validator(mode="after")
    def _check_chat(self):
        for name in ("tools", "functions", "audio", "prediction", "web_search_options"):
            if getattr(self, name):
                raise unsupported(name)
        if self.tool_choice not in (None, "none"):
            raise unsupported("tool_choice")
        if self.function_call not in (None, "none"):
            raise unsupported("function_call")
        if self.modalities not in (None, ["text"]):
            raise unsupported("modalities", "only ['text'] is served")
        if self.response_format not in (None, {"type": "text"}):
            raise unsupported("response_format", "only {'type': 'text'} is served yet")
        if self.top_logprobs and not self.logprobs:
            raise invalid("top_logprobs requires logprobs to be true.", "top_logprobs")
        if self.max_tokens and self.max_completion_tokens and self.max_tokens != self.max_completion_tokens:
            raise invalid(
                "Give max_completion_tokens or its deprecated alias max_tokens, not both.",
                "max_tokens",
            )
        return self

    @property
    def max_new_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


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
        if self.best_of not in (None, 1) and self.best_of != (self.n or 1):
            raise unsupported("best_of", "only best_of equal to n is served yet")
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


def _path_parts(loc: tuple[Any, ...]):
    previous: Any = None
    for part in loc:
        if isinstance(part, int) or (part != "body" and not _is_type_tag(part, after_index=isinstance(previous, int))):
            yield part
        previous = part


_ROLE_TAGS = {"system", "developer", "user", "assistant", "tool"}


def _is_type_tag(part: str, after_index: bool) -> bool:
    return (
        part in ("str", "int", "float", "bool", "list", "dict", "none")
        or (after_index and part in _ROLE_TAGS)
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


def chat_choice(index: int, text: str, finish_reason: str, logprobs: list | None) -> dict[str, Any]:
    return {
        "index": index,
        "message": {"role": "assistant", "content": text, "refusal": None, "annotations": []},
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


class AssistantMessageOut(_Response):
    role: Literal["assistant"]
    content: str | None
    refusal: str | None


class ChatChoiceOut(_Response):
    index: int
    message: AssistantMessageOut
    logprobs: dict[str, Any] | None
    finish_reason: Literal["stop", "length", "tool_calls", "content_filter"]


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
