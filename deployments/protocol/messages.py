"""Chat messages (``ChatCompletionRequestMessage`` and its roles), and the deprecated ``function_call`` / ``role: function`` form in today's terms.

This module imports neither torch, vLLM nor Ray.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import Field

from deployments.errors import invalid
from deployments.protocol.common import RequestModel


class TextPart(RequestModel):
    type: Literal["text"]
    text: str


Content = Union[str, Annotated[list[TextPart], Field(min_length=1)]]


class SystemMessage(RequestModel):
    role: Literal["system", "developer"]
    content: Content
    name: str | None = None


class UserMessage(RequestModel):
    role: Literal["user"]
    content: Content
    name: str | None = None


FUNCTION_NAME = r"^[a-zA-Z0-9_-]{1,64}$"


class FunctionCall(RequestModel):
    name: str
    arguments: str = Field(description="JSON text of the arguments object")


class ToolCallIn(RequestModel):
    """A call the assistant made earlier, sent back in the conversation."""

    id: str
    type: Literal["function"]
    function: FunctionCall


class AssistantMessage(RequestModel):
    role: Literal["assistant"]
    content: Content | None = None
    name: str | None = None
    refusal: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    annotations: list[Any] | None = None  # of an answer sent back as it came: output-only, no effect
    function_call: FunctionCall | None = None  # deprecated form of one tool call (see with_tool_calls)
    audio: Any = None  # rejected by the request's check


class ToolMessage(RequestModel):
    role: Literal["tool"]
    content: Content
    tool_call_id: str


class FunctionMessage(RequestModel):
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


def message_text(content: Content | None) -> str:
    """The text of a message's content, joining text parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.text for part in content)
