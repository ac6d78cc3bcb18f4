"""JSON text for everything the server writes: response bodies, SSE events, batch results.

One encoder, pydantic's (``pydantic_core.to_json``, Rust; pydantic is already a dependency):
about 9x faster than the standard library's ``json.dumps`` on embedding vectors (a 384-float
row: 27 against 270 us, measured here) and 4x on a chat chunk, with the text of
``json.dumps(..., ensure_ascii=False, separators=(",", ":"))``: compact, UTF-8, each float as the
shortest text that reads back to it, as Python writes it but for the exponent (``1e-6`` where
Python writes ``1e-06``; the same number to every JSON reader). Non-finite floats are written as ``json.dumps`` writes
them (``NaN``, ``Infinity``), which Python's ``json`` and the ``openai`` client read back.
"""

from __future__ import annotations

from typing import Any

from pydantic_core import to_json


def dumps(value: Any) -> bytes:
    """``value`` (dicts, lists, str, numbers, bools, None) as compact UTF-8 JSON."""
    return to_json(value, inf_nan_mode="constants")


def dumps_str(value: Any) -> str:
    return dumps(value).decode()
