"""The Files and Batches routes: ``add_batch_routes(app, service)`` adds them to the front.

They only parse the request, name the caller (``request.state.key``, set by the front's
authentication) and call the service; ``service`` is a :class:`~deployments.batch.service.BatchService`
or the Ray actor's proxy (``ray_driver.RayBatchService``), both called as ``await service.method(...)``.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, Response

from deployments.batch.service import owner_of
from deployments.errors import invalid


def add_batch_routes(app: FastAPI, service: Any) -> None:
    def owner(request: Request) -> str:
        return owner_of(request.state.key)

    def models(request: Request) -> list[str] | None:
        key = request.state.key
        return None if key is None or key.models is None else sorted(key.models)

    @app.post("/v1/files")
    async def create_file(request: Request, file: UploadFile = File(...), purpose: str = Form(...)) -> JSONResponse:
        """``CreateFileRequest`` (multipart: ``file``, ``purpose: batch``) -> ``OpenAIFile``."""
        data = await file.read()
        return JSONResponse(await service.create_file(owner(request), file.filename or "upload.jsonl", purpose, data))

    @app.get("/v1/files")
    async def list_files(request: Request, purpose: str | None = None, after: str | None = None, limit: int = 10000, order: str = "desc") -> JSONResponse:
        """``ListFilesResponse``: this key's files."""
        return JSONResponse(await service.list_files(owner(request), purpose, after, limit, order))

    @app.get("/v1/files/{file_id}")
    async def retrieve_file(file_id: str, request: Request) -> JSONResponse:
        """``OpenAIFile``."""
        return JSONResponse(await service.get_file(owner(request), file_id))

    @app.get("/v1/files/{file_id}/content")
    async def file_content(file_id: str, request: Request) -> Response:
        """The file's bytes."""
        return Response(await service.file_content(owner(request), file_id), media_type="application/octet-stream")

    @app.delete("/v1/files/{file_id}")
    async def delete_file(file_id: str, request: Request) -> JSONResponse:
        """``DeleteFileResponse``."""
        return JSONResponse(await service.delete_file(owner(request), file_id))

    @app.post("/v1/batches")
    async def create_batch(request: Request) -> JSONResponse:
        """``CreateBatchRequest`` -> ``Batch`` (validating)."""
        try:
            body = await request.json()
        except ValueError:
            raise invalid("The request body must be a JSON object.", None, "invalid_json") from None
        if not isinstance(body, dict):
            raise invalid("The request body must be a JSON object.", None, "invalid_json")
        return JSONResponse(await service.create_batch(owner(request), models(request), body))

    @app.get("/v1/batches")
    async def list_batches(request: Request, after: str | None = None, limit: int = 20) -> JSONResponse:
        """``ListBatchesResponse``: this key's batches, newest first."""
        return JSONResponse(await service.list_batches(owner(request), after, limit))

    @app.get("/v1/batches/{batch_id}")
    async def retrieve_batch(batch_id: str, request: Request) -> JSONResponse:
        """``Batch``, with ``request_counts`` as they stand."""
        return JSONResponse(await service.get_batch(owner(request), batch_id))

    @app.post("/v1/batches/{batch_id}/cancel")
    async def cancel_batch(batch_id: str, request: Request) -> JSONResponse:
        """``Batch`` (cancelling): lines in flight are dropped, finished ones stay in the output."""
        return JSONResponse(await service.cancel_batch(owner(request), batch_id))
