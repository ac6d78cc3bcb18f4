"""The Batch and File API shapes (OpenAI's ``OpenAIFile``, ``Batch``, batch output lines).

No torch, vLLM or Ray here: plain dicts built from the stored rows, and the create request.
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from deployments.protocol.schemas import ResponseModel

# the endpoints a batch may use, and the kind of model each needs (deployments/api.py's kinds)
ENDPOINTS = {"/v1/chat/completions": "llm", "/v1/completions": "llm", "/v1/embeddings": "embedding"}

# statuses
VALIDATING, IN_PROGRESS, FINALIZING, COMPLETED = "validating", "in_progress", "finalizing", "completed"
FAILED, EXPIRED, CANCELLING, CANCELLED = "failed", "expired", "cancelling", "cancelled"
ACTIVE = (VALIDATING, IN_PROGRESS, FINALIZING, CANCELLING)  # a driver resumes these
COMPLETION_WINDOW_S = 24 * 3600


# the spec's FileExpirationAfter / BatchFileExpirationAfter: seconds after the file's creation
MIN_EXPIRY_S, MAX_EXPIRY_S = 3600, 30 * 24 * 3600


class ExpiresAfter(BaseModel):
    """``FileExpirationAfter`` (files.create's ``expires_after``) and ``BatchFileExpirationAfter``
    (batches.create's ``output_expires_after``): the only anchor is the file's ``created_at``."""

    model_config = ConfigDict(extra="forbid")

    anchor: Literal["created_at"]
    seconds: int = Field(ge=MIN_EXPIRY_S, le=MAX_EXPIRY_S)


MetadataKey = Annotated[str, Field(max_length=64)]
MetadataValue = Annotated[str, Field(max_length=512)]


class CreateBatchRequest(BaseModel):
    """``CreateBatchRequest``. ``endpoint`` lists the endpoints a batch can run here (the spec's
    others, ``/v1/responses``, ``/v1/moderations``, images, videos, are a 400 naming it)."""

    model_config = ConfigDict(extra="forbid")

    input_file_id: str
    endpoint: Literal["/v1/chat/completions", "/v1/completions", "/v1/embeddings"]
    completion_window: Literal["24h"]
    metadata: dict[MetadataKey, MetadataValue] | None = Field(None, max_length=16)
    output_expires_after: ExpiresAfter | None = Field(
        None, description="The output and error files' expiry, from their creation (when the batch finishes)."
    )


class CreateFileForm(BaseModel):
    """``CreateFileRequest``'s fields beside ``file`` (multipart; ``expires_after[anchor]`` and
    ``expires_after[seconds]`` arrive as ``expires_after``)."""

    model_config = ConfigDict(extra="forbid")

    purpose: str
    expires_after: ExpiresAfter | None = None


def expiry(created_at: int, expires_after: dict[str, Any] | None) -> int | None:
    """The ``expires_at`` of a file created at ``created_at`` under ``expires_after``."""
    if expires_after is None:
        return None
    return created_at + ExpiresAfter.model_validate(expires_after).seconds


def expired(row: dict[str, Any], now: float) -> bool:
    return row.get("expires_at") is not None and row["expires_at"] <= now


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


# --------------------------------------------------------------------------- response models
# For the OpenAPI document (the routes' ``responses``); the routes return the dicts above.
class FileObject(ResponseModel):
    """``OpenAIFile``."""

    id: str
    object: Literal["file"]
    bytes: int
    created_at: int
    expires_at: int | None = None
    filename: str
    purpose: Literal["batch", "batch_output"]
    status: Literal["processed"]


class FileList(ResponseModel):
    """``ListFilesResponse`` (``first_id``/``last_id`` are ``""`` when ``data`` is empty)."""

    object: Literal["list"]
    data: list[FileObject]
    first_id: str
    last_id: str
    has_more: bool


class FileDeleted(ResponseModel):
    """``DeleteFileResponse``."""

    id: str
    object: Literal["file"]
    deleted: bool


class BatchErrorOut(ResponseModel):
    code: str | None = None
    message: str | None = None
    param: str | None = None
    line: int | None = None


class BatchErrors(ResponseModel):
    object: Literal["list"]
    data: list[BatchErrorOut]


class BatchRequestCounts(ResponseModel):
    total: int
    completed: int
    failed: int


class BatchUsage(ResponseModel):
    input_tokens: int
    input_tokens_details: dict[str, int]
    output_tokens: int
    output_tokens_details: dict[str, int]
    total_tokens: int


class BatchObject(ResponseModel):
    """``Batch``: the optional fields are left out while unset."""

    id: str
    object: Literal["batch"]
    endpoint: str
    model: str | None = None
    errors: BatchErrors | None = None
    input_file_id: str
    completion_window: str
    status: Literal["validating", "failed", "in_progress", "finalizing", "completed", "expired", "cancelling", "cancelled"]
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: int
    in_progress_at: int | None = None
    expires_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    request_counts: BatchRequestCounts | None = None
    usage: BatchUsage | None = None
    metadata: dict[str, str] | None = None


class BatchList(ResponseModel):
    """``ListBatchesResponse`` (``first_id``/``last_id`` left out when ``data`` is empty)."""

    object: Literal["list"]
    data: list[BatchObject]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool
