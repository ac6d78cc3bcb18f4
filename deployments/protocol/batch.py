"""The Batch and File API shapes (OpenAI's ``OpenAIFile``, ``Batch``, batch output lines).

No torch, vLLM or Ray here: plain dicts built from the stored rows, and the create request.
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# the endpoints a batch may use, and the kind of model each needs (deployments/api.py's kinds)
ENDPOINTS = {"/v1/chat/completions": "llm", "/v1/completions": "llm", "/v1/embeddings": "embedding"}

# statuses
VALIDATING, IN_PROGRESS, FINALIZING, COMPLETED = "validating", "in_progress", "finalizing", "completed"
FAILED, EXPIRED, CANCELLING, CANCELLED = "failed", "expired", "cancelling", "cancelled"
ACTIVE = (VALIDATING, IN_PROGRESS, FINALIZING, CANCELLING)  # a driver resumes these
COMPLETION_WINDOW_S = 24 * 3600


class CreateBatchRequest(BaseModel):
    """``CreateBatchRequest``."""

    model_config = ConfigDict(extra="forbid")

    input_file_id: str
    endpoint: Literal["/v1/chat/completions", "/v1/completions", "/v1/embeddings"]
    completion_window: Literal["24h"]
    metadata: dict[str, str] | None = Field(None, max_length=16)
    output_expires_after: dict[str, Any] | None = None


def new_file_id() -> str:
    return "file-" + uuid.uuid4().hex[:24]


def new_batch_id() -> str:
    return "batch_" + uuid.uuid4().hex[:24]


def line_id(batch_id: str, line: int) -> str:
    """The output line's ``id``: the same for the same line of the same batch, however often it runs."""
    return "batch_req_" + hashlib.sha256(f"{batch_id}:{line}".encode()).hexdigest()[:24]


def _present(body: dict[str, Any]) -> dict[str, Any]:
    """The spec's optional fields are not nullable: an unset one is left out."""
    return {k: v for k, v in body.items() if v is not None}


def file_object(row: dict[str, Any]) -> dict[str, Any]:
    """``OpenAIFile``."""
    return _present({
        "id": row["id"], "object": "file", "bytes": row["bytes"], "created_at": row["created_at"],
        "expires_at": row.get("expires_at"), "filename": row["filename"], "purpose": row["purpose"],
        "status": "processed",
    })


def file_list(rows: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    """``ListFilesResponse``."""
    data = [file_object(r) for r in rows]
    # the spec requires first_id and last_id as strings (not nullable): "" for an empty list
    return {
        "object": "list", "data": data, "first_id": data[0]["id"] if data else "",
        "last_id": data[-1]["id"] if data else "", "has_more": has_more,
    }


BATCH_TIMES = (
    "created_at", "in_progress_at", "expires_at", "finalizing_at", "completed_at", "failed_at", "expired_at",
    "cancelling_at", "cancelled_at",
)


def batch_object(row: dict[str, Any], counts: dict[str, int], usage: dict[str, int] | None = None) -> dict[str, Any]:
    """``Batch``."""
    body = {
        "id": row["id"], "object": "batch", "endpoint": row["endpoint"], "model": row.get("model"),
        "errors": {"object": "list", "data": row["errors"]} if row.get("errors") else None,
        "input_file_id": row["input_file_id"], "completion_window": row["completion_window"],
        "status": row["status"], "output_file_id": row.get("output_file_id"), "error_file_id": row.get("error_file_id"),
        **{name: row.get(name) for name in BATCH_TIMES},
        "request_counts": counts, "metadata": row.get("metadata"),
    }
    body = _present(body)
    if usage is not None:
        body["usage"] = {
            "input_tokens": usage["input_tokens"], "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": usage["output_tokens"], "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": usage["input_tokens"] + usage["output_tokens"],
        }
    return body


def batch_list(bodies: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    """``ListBatchesResponse``."""
    # first_id and last_id are optional and not nullable in the spec: left out of an empty list
    return _present({
        "object": "list", "data": bodies, "first_id": bodies[0]["id"] if bodies else None,
        "last_id": bodies[-1]["id"] if bodies else None, "has_more": has_more,
    })


def output_line(batch_id: str, line: int, custom_id: str | None, status: int | None, body: Any, error: dict | None = None) -> dict[str, Any]:
    """One line of the output or error file (OpenAI's batch output format)."""
    lid = line_id(batch_id, line)
    response = None if status is None else {"status_code": status, "request_id": "req_" + lid[len("batch_req_"):], "body": body}
    return {"id": lid, "custom_id": custom_id, "response": response, "error": error}
