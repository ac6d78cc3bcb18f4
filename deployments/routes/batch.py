"""The Files and Batches routes (``/v1/files``, ``/v1/batches``), served when the app has a batch
service (``AppState.batch``; ``batch.enabled`` in the config).

They only parse the request, name the caller (``request.state.key``, set by the front's
authentication) and call the service: a :class:`~deployments.batch.service.BatchService` or the
Ray actor's proxy (``deployments/batch/ray_driver.py: RayBatchService``), both called as
``await service.method(...)``.

The upload is a multipart form read here (``file``, ``purpose``, ``expires_after[anchor]``,
``expires_after[seconds]``, as the official clients send it): a field the API does not have, one
given twice, or a file where a value belongs is a 400 naming it.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException

from deployments import protocol
from deployments.batch.service import owner_of
from deployments.errors import invalid
from deployments.protocol import batch as bp
from deployments.routes.common import ERRORS, JSONBody, app_state

router = APIRouter()
MAX_FIELDS = 8
_NESTED = re.compile(r"^(\w+)\[(\w+)\]$")  # expires_after[seconds]
_EXPIRY_FIELDS = {
    "anchor": {"type": "string", "enum": ["created_at"]},
    "seconds": {"type": "integer", "minimum": bp.MIN_EXPIRY_S, "maximum": bp.MAX_EXPIRY_S},
}
UPLOAD_FORM = {
    "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["file", "purpose"], "additionalProperties": False,
        "properties": {
            "file": {"type": "string", "format": "binary", "description": "JSONL, one request per line"},
            "purpose": {"type": "string", "enum": ["batch"], "description": "only 'batch' is kept here (others: 400)"},
            **{f"expires_after[{name}]": schema for name, schema in _EXPIRY_FIELDS.items()},
        },
    }}}}
}
CONTENT = {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}, "description": "the file's bytes"}
FILE_ID = Path(description="A file id (files.create, or a batch's output_file_id / error_file_id).", examples=["file-abc123"])
BATCH_ID = Path(description="A batch id (batches.create).", examples=["batch_abc123"])


def _service(request: Request) -> Any:
    return app_state(request).batch


def owner(request: Request) -> str:
    return owner_of(request.state.key)


def models(request: Request) -> list[str] | None:
    key = request.state.key
    return None if key is None or key.models is None else sorted(key.models)


def _field(fields: dict[str, Any], key: str, value: str) -> None:
    """``key=value`` into ``fields``; ``name[sub]`` keys nest (``expires_after[seconds]``)."""
    nested = _NESTED.match(key)
    name, sub = nested.groups() if nested else (key, None)
    if sub is None and name not in fields:
        fields[name] = value
    elif sub is not None and isinstance(fields.setdefault(name, {}), dict) and sub not in fields[name]:
        fields[name][sub] = value
    else:
        raise invalid(f"'{key}' is given more than once.", name)


async def read_upload(request: Request) -> tuple[dict[str, Any], str, bytes]:
    """The form's fields (nested), and the uploaded file's name and bytes."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise invalid("Send the file as multipart/form-data, with its bytes in 'file'.", "file", "invalid_content_type")
    try:
        form = await request.form(max_files=2, max_fields=MAX_FIELDS)  # 2: a file sent twice, or as a field, is named
    except (StarletteHTTPException, MultiPartException, ValueError, KeyError) as exc:
        raise invalid(f"The multipart body could not be read: {getattr(exc, 'detail', exc)}", "file") from None
    fields: dict[str, Any] = {}
    upload: tuple[str, bytes] | None = None
    try:
        for key, value in form.multi_items():
            if key == "file":
                if not isinstance(value, UploadFile):
                    raise invalid("'file' must be a file upload (the JSONL's bytes), not a text field.", "file")
                if upload is not None:
                    raise invalid("'file' is given more than once: one file per upload.", "file")
                upload = (value.filename or "upload.jsonl", await value.read())
            elif isinstance(value, UploadFile):
                raise invalid(f"'{key}' must be a text field, not a file.", key.split("[")[0])
            else:
                _field(fields, key, value)
    finally:
        await form.close()
    if upload is None:
        raise invalid("Missing required parameter: 'file'.", "file", "missing_required_parameter")
    return fields, *upload


@router.post("/v1/files", responses={200: {"model": bp.FileObject}, **ERRORS}, openapi_extra=UPLOAD_FORM)
async def create_file(request: Request) -> JSONBody:
    """``CreateFileRequest`` (multipart: ``file``, ``purpose: batch``, optional ``expires_after``) -> ``OpenAIFile``."""
    fields, filename, data = await read_upload(request)
    try:
        form = bp.CreateFileForm.model_validate(fields)
    except ValidationError as exc:
        raise protocol.validation_error(exc) from None
    expires_after = form.expires_after.model_dump() if form.expires_after else None
    return JSONBody(await _service(request).create_file(owner(request), filename, form.purpose, data, expires_after))


@router.get("/v1/files", responses={200: {"model": bp.FileList}, **ERRORS})
async def list_files(
    request: Request,
    purpose: str | None = None,
    after: str | None = Query(None, description="A file id: the page after it."),
    limit: int = Query(10000, json_schema_extra={"minimum": 1, "maximum": 10000}),
    order: Literal["asc", "desc"] = "desc",
) -> JSONBody:
    """``ListFilesResponse``: this key's files (expired ones are gone)."""
    return JSONBody(await _service(request).list_files(owner(request), purpose, after, limit, order))


@router.get("/v1/files/{file_id}", responses={200: {"model": bp.FileObject}, **ERRORS})
async def retrieve_file(request: Request, file_id: str = FILE_ID) -> JSONBody:
    """``OpenAIFile``."""
    return JSONBody(await _service(request).get_file(owner(request), file_id))


@router.get("/v1/files/{file_id}/content", response_class=Response, responses={200: CONTENT, **ERRORS})
async def file_content(request: Request, file_id: str = FILE_ID) -> Response:
    """The file's bytes."""
    return Response(await _service(request).file_content(owner(request), file_id), media_type="application/octet-stream")


@router.delete("/v1/files/{file_id}", responses={200: {"model": bp.FileDeleted}, **ERRORS})
async def delete_file(request: Request, file_id: str = Path(description=FILE_ID.description, examples=["file-abc456"])) -> JSONBody:
    """``DeleteFileResponse``."""
    return JSONBody(await _service(request).delete_file(owner(request), file_id))


@router.post("/v1/batches", responses={200: {"model": bp.BatchObject}, **ERRORS})
async def create_batch(body: bp.CreateBatchRequest, request: Request) -> JSONBody:
    """``CreateBatchRequest`` -> ``Batch`` (validating)."""
    fields = body.model_dump(mode="json", exclude_unset=True)
    return JSONBody(await _service(request).create_batch(owner(request), models(request), fields))


@router.get("/v1/batches", responses={200: {"model": bp.BatchList}, **ERRORS})
async def list_batches(
    request: Request,
    after: str | None = Query(None, description="A batch id: the page after it."),
    limit: int = Query(20, json_schema_extra={"minimum": 1, "maximum": 100}),
) -> JSONBody:
    """``ListBatchesResponse``: this key's batches, newest first."""
    return JSONBody(await _service(request).list_batches(owner(request), after, limit))


@router.get("/v1/batches/{batch_id}", responses={200: {"model": bp.BatchObject}, **ERRORS})
async def retrieve_batch(request: Request, batch_id: str = BATCH_ID) -> JSONBody:
    """``Batch``, with ``request_counts`` as they stand."""
    return JSONBody(await _service(request).get_batch(owner(request), batch_id))


@router.post("/v1/batches/{batch_id}/cancel", responses={200: {"model": bp.BatchObject}, **ERRORS})
async def cancel_batch(request: Request, batch_id: str = BATCH_ID) -> JSONBody:
    """``Batch`` (cancelling): lines in flight are dropped, finished ones stay in the output."""
    return JSONBody(await _service(request).cancel_batch(owner(request), batch_id))
