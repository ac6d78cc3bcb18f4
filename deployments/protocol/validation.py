"""Pydantic's validation errors as one OpenAI 400 naming the first offending parameter.

This module imports neither torch, vLLM nor Ray.
"""

from __future__ import annotations

import functools
from typing import Any

from pydantic import ValidationError

from deployments.errors import APIError, ErrorKind, invalid
from deployments.protocol.common import RequestModel


def param_path(loc: tuple[Any, ...]) -> str | None:
    """``("messages", 0, "content")`` -> ``"messages[0].content"`` (OpenAI's notation).

    Pydantic adds the names of union members to the location (``str``, ``list[int]``,
    ``function-after[...]``); they are not request fields, so they are dropped.
    """
    out = ""
    for part in _path_parts(loc):
        out += f"[{part}]" if isinstance(part, int) else ("." if out else "") + part
    return out or None


_LOCATIONS = ("query", "path", "header", "cookie")
# discriminated unions put the member's tag after the field name
_UNION_TAGS = {fmt: {"text", "json_object", "json_schema"} for fmt in ("response_format", "format")}


def _path_parts(loc: tuple[Any, ...]):
    previous: Any = None
    listed: Any = None  # the field an index indexes (messages in messages[0])
    if loc and loc[0] in _LOCATIONS:  # FastAPI's where-it-came-from: ("query", "limit") is "limit"
        loc = loc[1:]
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

    return frozenset(names(RequestModel))


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
