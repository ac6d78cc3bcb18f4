"""Function tools, tool choice and response formats (``json_schema``, ``json_object``), with their JSON-schema checks.

This module imports neither torch, vLLM nor Ray.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import AfterValidator, Field

from deployments.protocol.common import RequestModel
from deployments.protocol.messages import FUNCTION_NAME


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


class FunctionSpec(RequestModel):
    """A function the model may call; as such, the deprecated ``functions`` item (``ChatCompletionFunctions``)."""

    name: str = Field(pattern=FUNCTION_NAME)
    description: str | None = None
    parameters: JsonSchema | None = None


class FunctionDefinition(FunctionSpec):
    strict: bool | None = None


class FunctionTool(RequestModel):
    type: Literal["function"]
    function: FunctionDefinition


def tool_dicts(tools: list[FunctionTool] | None) -> list[dict[str, Any]]:
    """Tools as plain dicts (what chat templates and prompts take)."""
    return [t.model_dump(exclude_none=True) for t in tools or []]


class FunctionName(RequestModel):
    name: str


class NamedToolChoice(RequestModel):
    type: Literal["function"]
    function: FunctionName


ToolChoice = Union[Literal["none", "auto", "required"], NamedToolChoice]


class JsonSchemaFormat(RequestModel):
    name: str = Field(pattern=FUNCTION_NAME)
    description: str | None = None
    schema_: JsonSchema | None = Field(None, alias="schema")
    strict: bool | None = None


class TextFormat(RequestModel):
    type: Literal["text"]


class JsonObjectFormat(RequestModel):
    type: Literal["json_object"]


class JsonSchemaResponseFormat(RequestModel):
    type: Literal["json_schema"]
    json_schema: JsonSchemaFormat


ResponseFormat = Annotated[Union[TextFormat, JsonObjectFormat, JsonSchemaResponseFormat], Field(discriminator="type")]

#: what ``{"type": "json_object"}`` asks for: some JSON object
ANY_JSON_OBJECT: dict[str, Any] = {"type": "object"}
