"""Response bodies as plain dicts, in the field order of OpenAI's docs (they sit on the streaming hot path).

This module imports neither torch, vLLM nor Ray.
"""

from __future__ import annotations

import base64
import time
import uuid
from typing import Any


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def chat_completion(
    id: str, created: int, model: str, choices: list[dict[str, Any]], usage_: dict[str, int]
) -> dict[str, Any]:
    return {
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": choices,
        "usage": usage_,
    }


def chat_choice(
    index: int,
    text: str | None,
    finish_reason: str,
    logprobs: list | None,
    tool_calls: list[dict[str, Any]] | None = None,
    functions: bool = False,
) -> dict[str, Any]:
    """A finished choice. One that calls tools has them as ``tool_calls`` and finishes with
    ``tool_calls``; in the deprecated form (``functions``) its one call is ``function_call``."""
    message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None, "annotations": []}
    if tool_calls:
        if functions:
            message["function_call"] = tool_calls[0]["function"]
        else:
            message["tool_calls"] = tool_calls
        finish_reason = calls_finish_reason(functions)
    return {
        "index": index,
        "message": message,
        "logprobs": {"content": logprobs, "refusal": None} if logprobs is not None else None,
        "finish_reason": finish_reason,
    }


def chat_chunk(
    id: str, created: int, model: str, choices: list[dict[str, Any]], usage_: dict[str, int] | None = None
) -> dict[str, Any]:
    return _choices_body("chat.completion.chunk", id, created, model, choices, usage_)


def chat_chunk_choice(
    index: int, delta: dict[str, Any], finish_reason: str | None = None, logprobs: list | None = None
) -> dict[str, Any]:
    return {
        "index": index,
        "delta": delta,
        "logprobs": {"content": logprobs, "refusal": None} if logprobs is not None else None,
        "finish_reason": finish_reason,
    }


def calls_finish_reason(functions: bool) -> str:
    """How a choice that calls tools finishes (``function_call`` in the deprecated form)."""
    return "function_call" if functions else "tool_calls"


def call_deltas(tool_calls: list[dict[str, Any]], functions: bool = False) -> list[dict[str, Any]]:
    """A choice's calls as streamed deltas: each call's id and name first, then its arguments.
    In the deprecated form, its one call as ``function_call``: the name, then the arguments."""
    if functions:
        call = tool_calls[0]["function"]
        return [{"function_call": {"name": call["name"], "arguments": ""}}, {"function_call": {"arguments": call["arguments"]}}]
    deltas = []
    for k, call in enumerate(tool_calls):
        head = {"index": k, "id": call["id"], "type": "function", "function": {"name": call["function"]["name"], "arguments": ""}}
        deltas.append({"tool_calls": [head]})
        deltas.append({"tool_calls": [{"index": k, "function": {"arguments": call["function"]["arguments"]}}]})
    return deltas


def text_completion(
    id: str, created: int, model: str, choices: list[dict[str, Any]], usage_: dict[str, int] | None
) -> dict[str, Any]:
    return _choices_body("text_completion", id, created, model, choices, usage_)


def completion_choice(index: int, text: str, finish_reason: str | None, logprobs: dict | None) -> dict[str, Any]:
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}


def embedding_list(model: str, vectors: list, encoding_format: str, prompt_tokens: int) -> dict[str, Any]:
    """``CreateEmbeddingResponse``; ``vectors`` are float32 numpy rows (or lists of floats)."""
    data = []
    for i, vec in enumerate(vectors):
        if encoding_format == "base64":
            embedding: Any = base64.b64encode(_float32_le_bytes(vec)).decode("ascii")
        else:
            embedding = vec.tolist() if hasattr(vec, "tolist") else [float(x) for x in vec]  # numpy's is ~10x faster
        data.append({"object": "embedding", "index": i, "embedding": embedding})
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }


def _float32_le_bytes(vec) -> bytes:
    import array
    import sys

    if hasattr(vec, "astype"):
        return vec.astype("<f4").tobytes()
    arr = array.array("f", vec)
    if sys.byteorder != "little":
        arr.byteswap()
    return arr.tobytes()


def model_card(model_id: str, created: int, owned_by: str, **metadata: Any) -> dict[str, Any]:
    """``Model``, with local metadata (engine, capabilities, context length) beside it."""
    return {"id": model_id, "object": "model", "created": created, "owned_by": owned_by, **metadata}


def model_list(cards: list[dict[str, Any]]) -> dict[str, Any]:
    return {"object": "list", "data": cards}


def _choices_body(kind: str, id: str, created: int, model: str, choices: list[dict[str, Any]], usage_: dict[str, int] | None) -> dict[str, Any]:
    """A body of choices (``object`` ``kind``), with ``usage`` when given."""
    body: dict[str, Any] = {"id": id, "object": kind, "created": created, "model": model, "choices": choices}
    if usage_ is not None:
        body["usage"] = usage_
    return body
