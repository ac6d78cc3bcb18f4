"""The Files and Batches operations the routes call, over one store, one storage and one driver.

Every method takes the caller's ``owner`` (a fingerprint of the API key, ``owner_of``) and sees
only that owner's files and batches: another owner's id is a 404, as an unknown one. In the
application this object lives in the batch driver's Ray actor (``ray_driver.py``); the fast tests
use it in-process. Both are called the same way (``await service.method(...)``).
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

from pydantic import ValidationError

from deployments import protocol as online
from deployments.protocol import batch as bp
from deployments.batch.files import FileStorage
from deployments.batch.runner import Execute, Runner
from deployments.batch.store import Store
from deployments.config import BatchConfig
from deployments.errors import APIError, ErrorKind, invalid


def owner_of(key) -> str:
    """A key's owner id: a hash of its secret (never stored), or ``""`` when the server is open."""
    return "" if key is None else hashlib.sha256(key.secret).hexdigest()[:32]


def _not_found(what: str, id: str, param: str) -> APIError:
    return APIError(ErrorKind.NOT_FOUND, f"No {what} with id '{id}' exists.", param=param, code="not_found")


class BatchService:
    def __init__(self, config: BatchConfig, execute: Execute, clock=time.time) -> None:
        self.config = config
        self.store = Store(config.db_path)
        self.storage = FileStorage(config.storage)
        self.runner = Runner(self.store, self.storage, execute, config, clock)
        self.clock = clock

    async def start(self) -> list[str]:
        """Resume the batches a previous driver left unfinished; returns their ids."""
        return self.runner.resume()

    def online_seen(self, at: float) -> None:
        """Online traffic was served at ``at``: batch lines yield to it (``batch.concurrency_while_online``)."""
        self.runner.online_seen(at)

    async def close(self) -> None:
        await self.runner.stop()
        self.store.close()

    # ------------------------------------------------------------------ files
    async def create_file(self, owner: str, filename: str, purpose: str, data: bytes,
                          expires_after: dict[str, Any] | None = None) -> dict[str, Any]:
        """An uploaded input file; ``expires_after`` (``{"anchor": "created_at", "seconds": n}``)
        gives it an ``expires_at``, after which it is no longer listed or served."""
        if purpose != "batch":
            raise invalid(f"Invalid value for 'purpose': this server keeps files for the Batch API only, so purpose must be 'batch' (got {purpose!r}).", "purpose", "invalid_value")
        limit = self.config.max_file_bytes
        if len(data) > limit:
            raise invalid(f"The file is {len(data)} bytes; the limit (batch.max_file_bytes) is {limit} bytes.", "file", "file_too_large")
        lines = sum(1 for text in data.split(b"\n") if text.strip())
        if lines > self.config.max_lines:
            raise invalid(f"The file has {lines} request lines; the limit (batch.max_lines) is {self.config.max_lines}.", "file", "too_many_lines")
        if lines == 0:
            raise invalid("The file has no request lines (JSONL, one request per line).", "file", "empty_file")
        try:
            now = int(self.clock())
            expires_at = bp.expiry(now, expires_after)
        except ValidationError as exc:
            raise online.validation_error([{**e, "loc": ("expires_after", *e["loc"])} for e in exc.errors()]) from None
        self._purge()
        file_id = bp.new_file_id()
        self.storage.put(file_id, data)
        row = self.store.add_file(file_id, owner, filename or "upload.jsonl", purpose, len(data), lines, now, expires_at)
        return bp.file_object(row)

    async def list_files(self, owner: str, purpose: str | None = None, after: str | None = None, limit: int = 10000, order: str = "desc") -> dict[str, Any]:
        if not 1 <= limit <= 10000:
            raise invalid("Invalid value for 'limit': between 1 and 10000.", "limit", "invalid_value")
        if order not in ("asc", "desc"):
            raise invalid("Invalid value for 'order': 'asc' or 'desc'.", "order", "invalid_value")
        self._purge()
        rows, more = self.store.files(owner, purpose, after, limit, order, self.clock())
        return bp.file_list(rows, more)

    def _file(self, owner: str, file_id: str, param: str = "file_id") -> dict[str, Any]:
        row = self.store.file(file_id, owner)
        if row is None or bp.expired(row, self.clock()):
            raise _not_found("file", file_id, param)
        return row

    def _purge(self) -> None:
        """Delete the expired files, but for the inputs of unfinished batches (a resumed batch
        reads its input again); those go once their batch is done."""
        expired = self.store.expired_files(self.clock())
        inputs = {b["input_file_id"] for b in self.store.active_batches(bp.ACTIVE)} if expired else set()
        for file_id in expired:
            if file_id not in inputs:
                self.store.delete_file(file_id)
                self.storage.delete(file_id)

    async def get_file(self, owner: str, file_id: str) -> dict[str, Any]:
        return bp.file_object(self._file(owner, file_id))

    async def file_content(self, owner: str, file_id: str) -> bytes:
        self._file(owner, file_id)
        return self.storage.get(file_id)

    async def delete_file(self, owner: str, file_id: str) -> dict[str, Any]:
        self._file(owner, file_id)
        self.store.delete_file(file_id, owner)
        self.storage.delete(file_id)
        return {"id": file_id, "object": "file", "deleted": True}

    # ------------------------------------------------------------------ batches
    async def create_batch(self, owner: str, models: list[str] | None, body: dict[str, Any]) -> dict[str, Any]:
        try:
            request = bp.CreateBatchRequest.model_validate(body)
        except ValidationError as exc:
            raise online.validation_error(exc) from None
        source = self._file(owner, request.input_file_id, "input_file_id")
        if source["purpose"] != "batch":
            raise invalid(f"The file '{request.input_file_id}' has purpose '{source['purpose']}'; a batch's input needs purpose 'batch'.", "input_file_id", "invalid_value")
        now = int(self.clock())
        row = {
            "id": bp.new_batch_id(), "endpoint": request.endpoint, "input_file_id": request.input_file_id,
            "completion_window": request.completion_window, "status": bp.VALIDATING, "created_at": now,
            "expires_at": now + bp.COMPLETION_WINDOW_S, "metadata": request.metadata, "total": source["lines"] or 0,
            "output_expires_after": request.output_expires_after.model_dump() if request.output_expires_after else None,
        }
        self.store.add_batch(row, owner, models)
        self.runner.launch(row["id"])
        return await self.get_batch(owner, row["id"])

    def _batch(self, owner: str, batch_id: str) -> dict[str, Any]:
        row = self.store.batch(batch_id, owner)
        if row is None:
            raise _not_found("batch", batch_id, "batch_id")
        return row

    def _object(self, row: dict[str, Any]) -> dict[str, Any]:
        completed, failed, tokens_in, tokens_out = self.store.counts(row["id"])
        counts = {"total": row.get("total", 0), "completed": completed, "failed": failed}
        usage = {"input_tokens": tokens_in, "output_tokens": tokens_out}
        return bp.batch_object(row, counts, usage)

    async def get_batch(self, owner: str, batch_id: str) -> dict[str, Any]:
        return self._object(self._batch(owner, batch_id))

    async def cancel_batch(self, owner: str, batch_id: str) -> dict[str, Any]:
        row = self._batch(owner, batch_id)
        if row["status"] in (bp.VALIDATING, bp.IN_PROGRESS):
            row = self.store.update_batch(batch_id, (bp.VALIDATING, bp.IN_PROGRESS), status=bp.CANCELLING, cancelling_at=int(self.clock()))
            self.runner.launch(batch_id)  # a no-op while its driver runs; it sees the status
        elif row["status"] not in (bp.CANCELLING, bp.CANCELLED):
            raise invalid(f"The batch is {row['status']}; only a validating or in-progress batch can be cancelled.", "batch_id", "invalid_value")
        return await self.get_batch(owner, batch_id)

    async def list_batches(self, owner: str, after: str | None = None, limit: int = 20) -> dict[str, Any]:
        if not 1 <= limit <= 100:
            raise invalid("Invalid value for 'limit': between 1 and 100.", "limit", "invalid_value")
        rows, more = self.store.batches(owner, after, limit)
        return bp.batch_list([self._object(r) for r in rows], more)

    async def wait(self, batch_id: str) -> None:
        """Until the batch's driver stops (tests)."""
        await self.runner.wait(batch_id)
