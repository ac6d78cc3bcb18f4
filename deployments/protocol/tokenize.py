"""``POST /tokenize`` and ``/detokenize`` (vLLM's shapes).

This module imports neither torch, vLLM nor Ray.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, model_validator

from deployments.errors import invalid, unsupported
from deployments.protocol.common import RequestModel
from deployments.protocol.messages import ChatMessage, with_tool_calls
from deployments.protocol.tools import FunctionTool, tool_dicts


class TokenizeRequest(RequestModel):
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


class DetokenizeRequest(RequestModel):
    """``POST /detokenize``: token ids back to text."""

    model: str
    tokens: list[int]
