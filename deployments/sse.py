"""All server-sent-event formatting, in one place.

OpenAI streams are ``data: {json}\\n\\n`` events ending with ``data: [DONE]\\n\\n`` exactly once;
an error after the stream has started is sent as one ``data: {"error": ...}`` event before it.
"""

from __future__ import annotations

import json
from typing import Any

from deployments.jsontext import dumps_str

DONE = "data: [DONE]\n\n"


def event(payload: dict[str, Any]) -> str:
    return f"data: {dumps_str(payload)}\n\n"


def error_then_done(body: dict[str, Any]) -> str:
    """A mid-stream error: the OpenAI error body as one event, then the end marker."""
    return event(body) + DONE


# The model server ends each finished stream with its token counts in an SSE comment (a line
# starting with ":", which SSE clients ignore), whether or not the client asked for a usage
# chunk; the ingress reads it for its metrics and removes it before the client sees the stream.
USAGE_COMMENT = ": usage "


def usage_comment(usage: dict[str, int]) -> str:
    """The stream's usage (prompt and completion tokens) as an SSE comment event."""
    return f"{USAGE_COMMENT}{dumps_str(usage)}\n\n"


def take_usage_comment(message: bytes) -> tuple[bytes, dict[str, int] | None]:
    """``message`` (whole SSE events) without its usage comment, and the usage it carried."""
    marker = USAGE_COMMENT.encode()
    if message.startswith(marker):
        start = 0
    else:
        start = message.find(b"\n\n" + marker) + 2  # events start a message or follow a blank line
        if start == 1:
            return message, None
    end = message.find(b"\n\n", start)
    if end < 0:
        return message, None
    return message[:start] + message[end + 2 :], json.loads(message[start + len(marker) : end])


def named_event(name: str, payload: dict[str, Any]) -> str:
    """An event with an ``event:`` name line (the Responses API's typed events)."""
    return f"event: {name}\ndata: {dumps_str(payload)}\n\n"


def data_payloads(message: str) -> list[Any]:
    """The ``data:`` payloads of whole SSE events, in order: parsed JSON, or ``DONE`` for the end
    marker. Comments and other fields are skipped (our own streams use one data line per event)."""
    out: list[Any] = []
    for line in message.split("\n"):
        if line.startswith("data: "):
            data = line[6:]
            out.append(DONE if data == "[DONE]" else json.loads(data))
    return out
