"""An answer's token usage, read from its body as the ingress sends it (metrics, rate limits).

Non-streamed bodies end with their ``usage`` object (protocol's builders put it last), so the
last bytes are enough. A stream carries its counts in the SSE comment the model server ends every
finished stream with (``sse.usage_comment``). A route that builds its own answer from a model's
(the Responses API) leaves the model's usage in ``request.state.usage`` instead.
"""

from __future__ import annotations

import json
import re
from typing import Any

from deployments import sse

# A chunk carries generated text when a "content", "text", "arguments" (chat, completions) or
# "delta" (Responses API) string is not empty. JSON escapes quotes inside strings, so this cannot
# match inside generated text itself.
GENERATED = re.compile(rb'"(?:content|text|arguments|delta)":"[^"]')
_USAGE_AT_END = re.compile(rb'"usage":(\{[^{}]*\})\}\s*$')
TAIL_BYTES = 512


def keep_tail(tail: bytes, body: bytes) -> bytes:
    """The last ``TAIL_BYTES`` of the body so far, ``body`` being its newest chunk."""
    return body[-TAIL_BYTES:] if len(body) >= TAIL_BYTES else (tail + body)[-TAIL_BYTES:]


def usage_at_end(tail: bytes) -> dict[str, int] | None:
    """The ``usage`` object a JSON answer ends with, or None."""
    match = _USAGE_AT_END.search(tail)
    return json.loads(match.group(1)) if match else None


def total_tokens(usage: dict[str, Any] | None) -> int:
    """Prompt plus completion tokens (input plus output in the Responses API's terms)."""
    if not usage:
        return 0
    if isinstance(usage.get("total_tokens"), int):
        return usage["total_tokens"]
    return sum(v for k, v in usage.items() if k in ("prompt_tokens", "completion_tokens", "input_tokens", "output_tokens") and isinstance(v, int))


class UsageTap:
    """Watches one answer go by (nothing is changed) and says how many tokens it used.

    A stream that ended without its counts (the client went away, or the stream was cut) is
    charged one token per chunk of generated text it had sent: a lower bound, since the prompt
    and the tokens of each chunk are only counted by the model server at the end.
    """

    def __init__(self) -> None:
        self.status: int | None = None
        self.stream = False
        self.tail = b""
        self.stream_usage: dict[str, int] | None = None
        self.text_chunks = 0

    def start(self, message: dict[str, Any]) -> None:
        self.status = message["status"]
        for name, value in message.get("headers") or []:
            if name.lower() == b"content-type":
                self.stream = value.startswith(b"text/event-stream")

    def feed(self, body: bytes) -> bytes:
        """Note what the body chunk says; return it as the client should get it (a stream's
        usage comment is for the server's own middleware, and is taken out)."""
        if not self.stream:
            self.tail = keep_tail(self.tail, body)
            return body
        body, usage = sse.take_usage_comment(body)
        if usage is not None:
            self.stream_usage = usage
        if GENERATED.search(body):
            self.text_chunks += 1
            self.on_text()
        return body

    def on_text(self) -> None:
        """Called for each streamed chunk that carries generated text (a hook for timing)."""

    def usage(self) -> dict[str, int] | None:
        """The answer's usage as its body says it, or None."""
        return self.stream_usage if self.stream else usage_at_end(self.tail)

    def tokens(self, route_usage: dict[str, int] | None = None) -> int:
        """Tokens to charge: ``route_usage`` (a route's own, ``request.state.usage``), else the
        answer's; nothing for an answer that is not a 200."""
        if self.status != 200:
            return 0
        if route_usage:
            return total_tokens(route_usage)
        if self.stream and self.stream_usage is None:
            return self.text_chunks
        return total_tokens(self.usage())
