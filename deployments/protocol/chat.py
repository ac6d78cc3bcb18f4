"""``POST /v1/chat/completions``: ``CreateChatCompletionRequest``.

This module imports neither torch, vLLM nor Ray.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import Field, model_validator

from deployments.errors import invalid, unsupported
from deployments.protocol.common import SamplingFields
from deployments.protocol.messages import AssistantMessage, ChatMessage, with_tool_calls
from deployments.protocol.tools import ANY_JSON_OBJECT, FunctionDefinition, FunctionName, FunctionSpec, FunctionTool, JsonObjectFormat, JsonSchemaResponseFormat, NamedToolChoice, ResponseFormat, ToolChoice, tool_dicts


class ChatCompletionRequest(SamplingFields):
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
