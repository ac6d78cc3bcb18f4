"""The Files and Batches routes (``/v1/files``, ``/v1/batches``), served when the app has a batch
service (``AppState.batch``; ``batch.enabled`` in the config).

They only parse the request, name the caller (``request.state.key``, set by the front's
authentication) and call the service: a :class:`~deployments.batch.service.BatchService` or the
Ray actor's proxy (``deployments/batch/ray_driver.py: RayBatchService``), both called as
``await service.method(...)``.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, Response

from deployments.batch.service import owner_of
from deployments.errors import not_a_json_object
from deployments.routes.common import app_state


router = APIRouter()


def _service(request: Request) -> Any:
    return app_state(request).batch


def owner(request: Request) -> str:
    return owner_of(request.state.key)


def models(request: Request) -> list[str] | None:
    key = request.state.key
    return None if key is None or key.models is None else sorted(key.models)


@router.post("/v1/files")
async def create_file(request: Request, file: UploadFile = File(...), purpose: str = Form(...)) -> JSONResponse:
    """``CreateFileRequest`` (multipart: ``file``, ``purpose: batch``) -> ``OpenAIFile``."""
    data = await file.read()
    return JSONResponse(await _service(request).create_file(owner(request), file.filename or "upload.jsonl", purpose, data))


@router.get("/v1/files")
async def list_files(request: Request, purpose: str | None = None, after: str | None = None, limit: int = 10000, order: str = "desc") -> JSONResponse:
    """``ListFilesResponse``: this key's files."""
    return JSONResponse(await _service(request).list_files(owner(request), purpose, after, limit, order))


@router.get("/v1/files/{file_id}")
async def retrieve_file(file_id: str, request: Request) -> JSONResponse:
    """``OpenAIFile``."""
    return JSONResponse(await _service(request).get_file(owner(request), file_id))


@router.get("/v1/files/{file_id}/content")
async def file_content(file_id: str, request: Request) -> Response:
    """The file's bytes."""
    return Response(await _service(request).file_content(owner(request), file_id), media_type="application/octet-stream")


@router.delete("/v1/files/{file_id}")
async def delete_file(file_id: str, request: Request) -> JSONResponse:
    """``DeleteFileResponse``."""
    return JSONResponse(await _service(request).delete_file(owner(request), file_id))


@router.post("/v1/batches")
async def create_batch(request: Request) -> JSONResponse:
    """``CreateBatchRequest`` -> ``Batch`` (validating)."""
    try:
        body = await request.json()
    except ValueError:
        raise not_a_json_object() from None
    if not isinstance(body, dict):
        raise not_a_json_object()
    return JSONResponse(await _service(request).create_batch(owner(request), models(request), body))


@router.get("/v1/batches")
async def list_batches(request: Request, after: str | None = None, limit: int = 20) -> JSONResponse:
    """``ListBatchesResponse``: this key's batches, newest first."""
    return JSONResponse(await _service(request).list_batches(owner(request), after, limit))


@router.get("/v1/batches/{batch_id}")
async def retrieve_batch(batch_id: str, request: Request) -> JSONResponse:
    """``Batch``, with ``request_counts`` as they stand."""
    return JSONResponse(await _service(request).get_batch(owner(request), batch_id))


@router.post("/v1/batches/{batch_id}/cancel")
async def cancel_batch(batch_id: str, request: Request) -> JSONResponse:
    """``Batch`` (cancelling): lines in flight are dropped, finished ones stay in the output."""
    return JSONResponse(await _service(request).cancel_batch(owner(request), batch_id))
