"""``POST /v1/responses``: ``CreateResponse`` (input items, tools, text formats).

This module imports neither torch, vLLM nor Ray.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import Discriminator, Field, Tag, model_validator

from deployments.errors import unsupported
from deployments.protocol.common import RequestModel, check_stream_options
from deployments.protocol.tools import FunctionDefinition, JsonObjectFormat, JsonSchema, JsonSchemaFormat, TextFormat


class InputText(RequestModel):
    type: Literal["input_text", "output_text"]
    text: str
    annotations: list[Any] | None = None  # output_text echoed back from an earlier response
    logprobs: list[Any] | None = None


class InputMessage(RequestModel):
    """``EasyInputMessage`` / ``InputMessage``: a message in a response's input."""

    type: Literal["message"] | None = None
    role: Literal["user", "assistant", "system", "developer"]
    content: Union[str, Annotated[list[InputText], Field(min_length=1)]]
    id: str | None = None  # an earlier output message echoed back
    status: str | None = None


class FunctionCallItem(RequestModel):
    """A ``function_call`` output item of an earlier response, sent back as input."""

    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str
    id: str | None = None
    status: str | None = None


class FunctionCallOutputItem(RequestModel):
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


class ResponsesNamedTool(RequestModel):
    type: Literal["function"]
    name: str


class ResponsesJsonSchemaFormat(JsonSchemaFormat):
    """The Responses API's flat ``text.format`` for a JSON schema."""

    type: Literal["json_schema"]
    schema_: JsonSchema = Field(alias="schema")


class ResponsesText(RequestModel):
    format: Annotated[Union[TextFormat, JsonObjectFormat, ResponsesJsonSchemaFormat], Field(discriminator="type")] | None = None
    verbosity: str | None = None


class ResponsesStreamOptions(RequestModel):
    include_obfuscation: bool | None = None


class ResponsesRequest(RequestModel):
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
        check_stream_options(self)
        if self.text is not None and self.text.verbosity not in (None, "medium"):
            raise unsupported("text.verbosity")
        return self
