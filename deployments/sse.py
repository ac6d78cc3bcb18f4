"""All server-sent-event formatting, in one place.

OpenAI streams are ``data: {json}\\n\\n`` events ending with ``data: [DONE]\\n\\n`` exactly once;
an error after the stream has started is sent as one ``data: {"error": ...}`` event before it.
"""

from __future__ import annotations

import json
from typing import Any

DONE = "data: [DONE]\n\n"


def event(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False, separators=(',', ':'))}\n\n"


def error_then_done(body: dict[str, Any]) -> str:
    """A mid-stream error: the OpenAI error body as one event, then the end marker."""
    return event(body) + DONE
