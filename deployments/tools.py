"""Tool calling as text: how tools reach the model and how its answer becomes ``tool_calls``.

Models call tools by writing text. Chat templates that know tools (Qwen, Hermes, Llama 3.1...)
render the definitions themselves; for the others (the default SmolLM2 among them) a system
section describes the functions and asks for the widespread Hermes form::

    <tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>

The parser accepts that form, and a bare JSON object or array of such objects (what Llama-style
models and constrained decoding produce; ``parameters`` is taken as a synonym of
``arguments``). With ``tool_choice`` ``required`` or a named function the model server
constrains decoding to :func:`call_schema`, so the answer *is* a call: bare JSON, parsed here.

Pure Python: no torch, vLLM or Ray.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

OPEN, CLOSE = "<tool_call>", "</tool_call>"
# a forced answer may hold several calls when parallel calls are allowed (bounded, on 2 cores)
MAX_PARALLEL_CALLS = 4


@dataclass
class ToolCall:
    name: str
    arguments: str  # JSON text of an object
    id: str = ""

    def __post_init__(self) -> None:
        if not self.id:
            self.id = "call_" + uuid.uuid4().hex[:24]

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


def system_prompt(tools: list[dict[str, Any]]) -> str:
    """The system section that tells a model without native tool support how to call tools."""
    lines = [
        "You can call functions. Their definitions, as JSON:",
        *(json.dumps(t["function"], ensure_ascii=False) for t in tools),
        f"To call a function, answer with only {OPEN}{{\"name\": <function name>, \"arguments\": <arguments object>}}{CLOSE}"
        " (one such block per call). Otherwise answer normally.",
    ]
    return "\n".join(lines)


def arguments_value(arguments: str) -> Any:
    """A call's arguments text as the object it encodes, or the text itself if it is not JSON."""
    try:
        return json.loads(arguments)
    except ValueError:
        return arguments


def call_text(name: str, arguments: str) -> str:
    """An earlier call of the assistant, written back into a conversation as the model would."""
    return OPEN + json.dumps({"name": name, "arguments": arguments_value(arguments)}, ensure_ascii=False) + CLOSE


def _one_call_schema(function: dict[str, Any]) -> dict[str, Any]:
    params = function.get("parameters") or {"type": "object", "properties": {}}
    return {
        "type": "object",
        "properties": {"name": {"const": function["name"]}, "arguments": params},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


def call_schema(tools: list[dict[str, Any]], named: str | None, parallel: bool) -> dict[str, Any]:
    """The JSON schema a forced answer must follow: one call of ``named``, or any tool's calls
    (an array of 1..MAX_PARALLEL_CALLS when ``parallel``, else one)."""
    functions = [t["function"] for t in tools]
    if named is not None:
        return _one_call_schema(next(f for f in functions if f["name"] == named))
    one = _one_call_schema(functions[0]) if len(functions) == 1 else {"anyOf": [_one_call_schema(f) for f in functions]}
    if not parallel:
        return one
    return {"type": "array", "items": one, "minItems": 1, "maxItems": MAX_PARALLEL_CALLS}


def _as_call(obj: Any, names: set[str]) -> ToolCall | None:
    if not isinstance(obj, dict) or obj.get("name") not in names:
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):  # some models write the arguments as a JSON string
        try:
            args = json.loads(args)
        except ValueError:
            return None
    if not isinstance(args, dict):
        return None
    return ToolCall(obj["name"], json.dumps(args, ensure_ascii=False))


def _json_calls(text: str, names: set[str]) -> list[ToolCall] | None:
    """``text`` as one call object or an array of them; None if it is not exactly that."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    items = value if isinstance(value, list) else [value]
    calls = [_as_call(item, names) for item in items]
    if not calls or any(c is None for c in calls):
        return None
    return calls  # type: ignore[return-value]


def parse(text: str, names: set[str]) -> tuple[str, list[ToolCall]]:
    """Split a finished answer into its plain text and the calls it makes (of known tools).

    Text that only looks like a call (unknown function, broken JSON) stays text: the client
    sees what the model wrote rather than a call that cannot be made.
    """
    stripped = text.strip()
    calls = _json_calls(stripped, names)
    if calls is not None:
        return "", calls
    content, calls, rest = [], [], text
    while OPEN in rest:
        before, _, after = rest.partition(OPEN)
        body, closed, after_close = after.partition(CLOSE)
        found = _json_calls(body.strip(), names)
        if found is None:
            break
        content.append(before)
        calls.extend(found)
        rest = after_close if closed else ""
    if not calls:
        return text, []
    content.append(rest)
    return "".join(content).strip(), calls


class StreamSplitter:
    """Streams an answer's plain text at once while holding back what may be a tool call.

    Text is held from a possible start of a call (``<tool_call>``, or ``{``/``[`` opening the
    answer) to the end, where :meth:`finish` parses it.
    """

    def __init__(self, names: set[str]) -> None:
        self.names = names
        self._text = ""  # everything so far
        self._sent = 0  # characters already released as content
        self._holding = False

    def feed(self, delta: str) -> str:
        self._text += delta
        if self._holding:
            return ""
        if self._sent == 0 and self._text.lstrip()[:1] in ("{", "["):
            self._holding = True
            return ""
        start = self._text.find(OPEN, self._sent)
        if start >= 0:
            self._holding = True
            out, self._sent = self._text[self._sent:start], start
            return out
        # keep back a tail that may be the beginning of OPEN
        keep = next((k for k in range(min(len(OPEN) - 1, len(self._text)), 0, -1) if OPEN.startswith(self._text[-k:])), 0)
        end = len(self._text) - keep
        if self._sent == 0 and not self._text.strip():
            end = 0  # leading whitespace: wait to see whether a JSON call follows
        out, self._sent = self._text[self._sent:end], max(self._sent, end)
        return out

    def finish(self) -> tuple[str, list[ToolCall]]:
        """The rest of the content, and the calls found in the held text."""
        rest = self._text[self._sent:]
        content, calls = parse(rest, self.names)
        return (content if calls else rest), calls
