"""The Responses API (``/v1/responses``) on top of chat completions.

A Responses request is translated into a chat completion request for the model's deployment, and
its answer (a completion, or a stream of chat chunks) back into a ``response`` object or the
Responses API's typed stream events. The model servers therefore know only chat; tools,
structured text, logprobs and limits behave exactly as they do there.

Responses are kept for ``previous_response_id`` in a bounded in-memory store of the ingress
replica (least recently used first out), with the whole conversation that led to each one.
With several ingress replicas a chained request may reach a replica that does not hold the
earlier response; it then gets a 404 naming ``previous_response_id`` (docs/operations.md).

Pure Python: no torch, vLLM or Ray.
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from deployments import protocol, sse
from deployments.errors import APIError, ErrorKind
from deployments.protocol import (
    ChatCompletionRequest,
    FunctionCallItem,
    FunctionCallOutputItem,
    InputMessage,
    JsonObjectFormat,
    ResponsesJsonSchemaFormat,
    ResponsesNamedTool,
    ResponsesRequest,
)

# chat parameter names -> the Responses API's, for errors raised on the translated request
PARAM_NAMES = {
    "messages": "input",
    "max_completion_tokens": "max_output_tokens",
    "max_tokens": "max_output_tokens",
    "response_format": "text.format",
    "logprobs": "top_logprobs",
}


def new_id(prefix: str) -> str:
    """An id as OpenAI writes them in this API: ``resp_…``, ``msg_…``, ``fc_…``."""
    return f"{prefix}_{uuid.uuid4().hex}"


def rename_param(error: APIError) -> APIError:
    """An error about the translated chat request, naming the Responses API's parameter."""
    if error.param:
        head, dot, rest = error.param.partition(".")
        base, bracket, index = head.partition("[")
        if base in PARAM_NAMES:
            error.param = PARAM_NAMES[base] + bracket + index + dot + rest
    return error


# --------------------------------------------------------------------------- the store
@dataclass
class Stored:
    response: dict[str, Any]
    messages: list[dict[str, Any]]  # the conversation up to and including this response


class ResponseStore:
    """Responses by id for ``previous_response_id``, at most ``size`` of them."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[str, Stored] = OrderedDict()

    def put(self, response: dict[str, Any], messages: list[dict[str, Any]]) -> None:
        if self.size <= 0:
            return
        self._items[response["id"]] = Stored(response, messages)
        self._items.move_to_end(response["id"])
        while len(self._items) > self.size:
            self._items.popitem(last=False)

    def get(self, response_id: str, param: str = "response_id") -> Stored:
        stored = self._items.get(response_id)
        if stored is None:
            raise APIError(
                ErrorKind.NOT_FOUND,
                f"No response with id '{response_id}' is stored here (responses are kept in memory, "
                f"the latest {self.size}).",
                param=param,
                code="response_not_found",
            )
        self._items.move_to_end(response_id)
        return stored

    def delete(self, response_id: str) -> None:
        self.get(response_id)
        del self._items[response_id]


# --------------------------------------------------------------------------- request -> chat
def input_messages(req: ResponsesRequest) -> list[dict[str, Any]]:
    """The request's input as chat messages (consecutive function calls become one assistant
    message with several tool calls)."""
    if isinstance(req.input, str):
        return [{"role": "user", "content": req.input}]
    out: list[dict[str, Any]] = []
    for item in req.input:
        if isinstance(item, InputMessage):
            text = item.content if isinstance(item.content, str) else "".join(p.text for p in item.content)
            out.append({"role": item.role, "content": text})
        elif isinstance(item, FunctionCallItem):
            call = {"id": item.call_id, "type": "function", "function": {"name": item.name, "arguments": item.arguments}}
            if out and out[-1]["role"] == "assistant" and out[-1].get("tool_calls"):
                out[-1]["tool_calls"].append(call)
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif isinstance(item, FunctionCallOutputItem):
            out.append({"role": "tool", "tool_call_id": item.call_id, "content": item.output})
    return out


def to_chat(req: ResponsesRequest, history: list[dict[str, Any]]) -> tuple[ChatCompletionRequest, list[dict[str, Any]]]:
    """The chat completion request that answers ``req`` after ``history``; and the conversation
    without the instructions (which, as in OpenAI's API, are not carried to the next response)."""
    conversation = history + input_messages(req)
    messages = ([{"role": "system", "content": req.instructions}] if req.instructions else []) + conversation
    chat: dict[str, Any] = {"model": req.model, "messages": messages, "stream": bool(req.stream)}
    if req.stream:
        chat["stream_options"] = {"include_usage": True}
    for name in ("temperature", "top_p", "parallel_tool_calls", "user"):
        if getattr(req, name) is not None:
            chat[name] = getattr(req, name)
    if req.max_output_tokens is not None:
        chat["max_completion_tokens"] = req.max_output_tokens
    if req.top_logprobs is not None:
        chat["logprobs"], chat["top_logprobs"] = True, req.top_logprobs
    if req.tools:
        chat["tools"] = [
            {"type": "function", "function": t.model_dump(exclude={"type"}, exclude_none=True)} for t in req.tools
        ]
    if isinstance(req.tool_choice, ResponsesNamedTool):
        chat["tool_choice"] = {"type": "function", "function": {"name": req.tool_choice.name}}
    elif req.tool_choice is not None:
        chat["tool_choice"] = req.tool_choice
    fmt = req.text.format if req.text else None
    if isinstance(fmt, JsonObjectFormat):
        chat["response_format"] = {"type": "json_object"}
    elif isinstance(fmt, ResponsesJsonSchemaFormat):
        schema = fmt.model_dump(by_alias=True, exclude={"type"}, exclude_none=True)
        chat["response_format"] = {"type": "json_schema", "json_schema": schema}
    try:
        return ChatCompletionRequest.model_validate(chat), conversation
    except APIError as exc:
        raise rename_param(exc) from exc
    except Exception as exc:  # pydantic's ValidationError
        raise rename_param(protocol.validation_error(exc)) from exc


# --------------------------------------------------------------------------- chat -> response
def _text_format(req: ResponsesRequest) -> dict[str, Any]:
    fmt = req.text.format if req.text else None
    return fmt.model_dump(by_alias=True, exclude_none=True) if fmt is not None else {"type": "text"}


def response_object(
    req: ResponsesRequest,
    response_id: str,
    created: float,
    status: str,
    output: list[dict[str, Any]],
    usage: dict[str, int] | None,
    incomplete_reason: str | None = None,
) -> dict[str, Any]:
    """A ``Response`` (the fields the spec requires, with the request's settings echoed)."""
    tool_choice = req.tool_choice.model_dump() if isinstance(req.tool_choice, ResponsesNamedTool) else (req.tool_choice or "auto")
    fields = {
        "id": response_id,
        "object": "response",
        "created_at": int(created),
        "status": status,
        "completed_at": int(time.time()) if status == "completed" else None,
        "error": None,
        "incomplete_details": {"reason": incomplete_reason} if incomplete_reason else None,
        "instructions": req.instructions,
        "max_output_tokens": req.max_output_tokens,
        "model": req.model,
        "output": output,
        "parallel_tool_calls": req.parallel_tool_calls is not False,
        "previous_response_id": req.previous_response_id,
        "store": req.store is not False,
        "temperature": 1.0 if req.temperature is None else req.temperature,
        "text": {"format": _text_format(req)},
        "tool_choice": tool_choice,
        "tools": [t.model_dump(exclude_none=True) for t in req.tools or []],
        "top_logprobs": req.top_logprobs,
        "top_p": 1.0 if req.top_p is None else req.top_p,
        "truncation": "disabled",
        "usage": _usage(usage) if usage else None,
        "metadata": req.metadata or {},
        "user": req.user,
    }
    # the spec's optional fields are not nullable: left out when there is nothing to say
    return {k: v for k, v in fields.items() if v is not None or k in _REQUIRED}


_REQUIRED = {
    "id", "object", "created_at", "error", "incomplete_details", "instructions", "model", "tools", "output",
    "parallel_tool_calls", "metadata", "tool_choice", "temperature", "top_p",
}


def _usage(chat_usage: dict[str, int]) -> dict[str, Any]:
    return {
        "input_tokens": chat_usage["prompt_tokens"],
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": chat_usage["completion_tokens"],
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": chat_usage["prompt_tokens"] + chat_usage["completion_tokens"],
    }


def _message_item(item_id: str, text: str, logprobs: list | None, status: str = "completed") -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "message",
        "role": "assistant",
        "status": status,
        "content": [_text_part(text, logprobs)] if status == "completed" else [],
    }


def _text_part(text: str, logprobs: list | None) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs or []}


def _call_item(item_id: str, call: dict[str, Any], status: str = "completed") -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "function_call",
        "call_id": call["id"],
        "name": call["function"]["name"],
        "arguments": call["function"]["arguments"] if status == "completed" else "",
        "status": status,
    }


def _status(finish_reason: str | None) -> tuple[str, str | None]:
    return ("incomplete", "max_output_tokens") if finish_reason == "length" else ("completed", None)


def from_chat(req: ResponsesRequest, response_id: str, created: float, completion: dict[str, Any]) -> dict[str, Any]:
    """The ``Response`` for a finished chat completion."""
    choice = completion["choices"][0]
    message = choice["message"]
    output = []
    if message.get("content"):
        logprobs = (choice.get("logprobs") or {}).get("content")
        output.append(_message_item(new_id("msg"), message["content"], logprobs))
    output += [_call_item(new_id("fc"), call) for call in message.get("tool_calls") or []]
    status, reason = _status(choice["finish_reason"])
    return response_object(req, response_id, created, status, output, completion["usage"], reason)


def as_chat_messages(output: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A response's output items as the assistant's turn of a chat conversation."""
    text = "".join(p["text"] for item in output if item["type"] == "message" for p in item["content"])
    calls = [
        {"id": i["call_id"], "type": "function", "function": {"name": i["name"], "arguments": i["arguments"]}}
        for i in output
        if i["type"] == "function_call"
    ]
    message: dict[str, Any] = {"role": "assistant", "content": text or None}
    if calls:
        message["tool_calls"] = calls
    return [message]


class StreamTranslator:
    """Chat completion chunks in, the Responses API's typed events out (as SSE text)."""

    def __init__(self, req: ResponsesRequest, response_id: str, created: float) -> None:
        self.req, self.id, self.created = req, response_id, created
        self.seq = 0
        self.output: list[dict[str, Any]] = []  # finished items
        self._message: dict[str, Any] | None = None  # the open message item
        self._text, self._logprobs = "", []
        self._calls: dict[int, dict[str, Any]] = {}  # chat tool-call index -> open function_call item
        self._finish: str | None = None
        self._usage: dict[str, int] | None = None
        self.response: dict[str, Any] | None = None  # the final response, once finished
        self.failed = False  # an error event was sent: the stream ends there

    @property
    def usage(self) -> dict[str, int] | None:
        """The chat usage of the finished stream (prompt and completion tokens)."""
        return self._usage

    def _event(self, kind: str, **fields: Any) -> str:
        payload = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return sse.named_event(kind, payload)

    def _snapshot(self, status: str) -> dict[str, Any]:
        return response_object(self.req, self.id, self.created, status, list(self.output), None)

    def start(self) -> list[str]:
        return [
            self._event("response.created", response=self._snapshot("in_progress")),
            self._event("response.in_progress", response=self._snapshot("in_progress")),
        ]

    def feed(self, chunk: dict[str, Any]) -> list[str]:
        """Events for one chat chunk."""
        events: list[str] = []
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            logprobs = (choice.get("logprobs") or {}).get("content") or []
            if delta.get("content"):
                events += self._open_message()
                self._text += delta["content"]
                self._logprobs += logprobs
                events.append(
                    self._event(
                        "response.output_text.delta", item_id=self._message["id"], output_index=len(self.output),
                        content_index=0, delta=delta["content"], logprobs=logprobs,
                    )
                )
            for fragment in delta.get("tool_calls") or []:
                events += self._call_fragment(fragment)
            if choice.get("finish_reason"):
                self._finish = choice["finish_reason"]
        return events

    def _open_message(self) -> list[str]:
        if self._message is not None:
            return []
        self._message = _message_item(new_id("msg"), "", None, status="in_progress")
        index = len(self.output)
        return [
            self._event("response.output_item.added", output_index=index, item=self._message),
            self._event(
                "response.content_part.added", item_id=self._message["id"], output_index=index, content_index=0,
                part=_text_part("", None),
            ),
        ]

    def _close_message(self) -> list[str]:
        if self._message is None:
            return []
        item_id, index = self._message["id"], len(self.output)
        part = _text_part(self._text, self._logprobs)
        item = _message_item(item_id, self._text, self._logprobs)
        self._message = None
        self.output.append(item)
        return [
            self._event(
                "response.output_text.done", item_id=item_id, output_index=index, content_index=0, text=self._text,
                logprobs=self._logprobs,
            ),
            self._event("response.content_part.done", item_id=item_id, output_index=index, content_index=0, part=part),
            self._event("response.output_item.done", output_index=index, item=item),
        ]

    def _call_fragment(self, fragment: dict[str, Any]) -> list[str]:
        events: list[str] = []
        item = self._calls.get(fragment["index"])
        if item is None:  # a new call: the text before it is complete
            events += self._close_message()
            call = {"id": fragment.get("id") or new_id("call"), "function": {"name": fragment["function"]["name"], "arguments": ""}}
            item = _call_item(new_id("fc"), call, status="in_progress")
            item["output_index"] = len(self.output) + len(self._calls)
            self._calls[fragment["index"]] = item
            events.append(self._event("response.output_item.added", output_index=item["output_index"], item=_public(item)))
        args = (fragment.get("function") or {}).get("arguments") or ""
        if args:
            item["arguments"] += args
            events.append(
                self._event(
                    "response.function_call_arguments.delta", item_id=item["id"], output_index=item["output_index"], delta=args
                )
            )
        return events

    def finish(self) -> list[str]:
        """The closing events, ending with ``response.completed`` (or ``response.incomplete``)."""
        events = self._close_message()
        for item in self._calls.values():
            done = {**_public(item), "status": "completed"}
            events.append(
                self._event(
                    "response.function_call_arguments.done", item_id=item["id"], output_index=item["output_index"],
                    arguments=item["arguments"], name=item["name"],
                )
            )
            events.append(self._event("response.output_item.done", output_index=item["output_index"], item=done))
            self.output.append(done)
        self._calls.clear()
        status, reason = _status(self._finish)
        self.response = response_object(self.req, self.id, self.created, status, list(self.output), self._usage, reason)
        kind = "response.completed" if status == "completed" else "response.incomplete"
        events.append(self._event(kind, response=self.response))
        return events

    def error(self, body: dict[str, Any]) -> list[str]:
        """A failure after the stream started: an ``error`` event (then the stream ends)."""
        self.failed = True
        err = body.get("error", {})
        return [self._event("error", code=err.get("code"), message=err.get("message", "error"), param=err.get("param"))]


def _public(item: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in item.items() if k != "output_index"}
