"""The batch driver: takes a batch from ``validating`` to ``completed`` (or ``failed``,
``cancelled``, ``expired``), with a bounded number of requests in flight: a chat or completion
line is one request; embedding lines go in groups (``batch.embedding_lines_per_request``), one
request each, whose inputs the model encodes together.

Every state it needs is in the store: the status, and each line's result recorded (once, keyed by
line) before it counts. A driver started on the same store, after a restart or the death of the
last one, resumes every batch that was not finished: lines with a result are not run again, lines
without one run, and the output is assembled from the recorded results when the batch finalizes.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections import deque
from typing import Any, Awaitable, Callable

from deployments.protocol import batch as bp
from deployments.batch.files import FileStorage
from deployments.batch.store import Store
from deployments.config import BatchConfig
from deployments.errors import invalid, not_a_json_object

logger = logging.getLogger("ray.serve")

# (endpoint, bodies, models the owner's key may use) -> [(status, body)], each as the online API answers
Execute = Callable[[str, "list[Any]", "list[str] | None"], Awaitable["list[tuple[int, Any]]"]]
EMBEDDINGS = "/v1/embeddings"
RETRYABLE = {429, 500, 502, 503, 504}


class Line:
    """One request line of the input file, parsed; ``error`` is the 400 it gets without running."""

    def __init__(self, index: int, number: int, text: bytes, endpoint: str) -> None:
        self.index, self.number = index, number  # position among the requests, line number in the file
        self.custom_id: str | None = None
        self.body: Any = None
        self.error: dict[str, Any] | None = None
        try:
            item = json.loads(text)
        except ValueError as exc:
            self.error = invalid(f"The request line is not valid JSON: {exc}", None, "invalid_json").body()
            return
        if not isinstance(item, dict):
            self.error = not_a_json_object("request line").body()
            return
        custom_id = item.get("custom_id")
        self.custom_id = custom_id if isinstance(custom_id, str) else None
        if self.custom_id is None:
            self.error = invalid("Missing required parameter: 'custom_id' (a string).", "custom_id", "missing_required_parameter").body()
        elif item.get("method", "POST") != "POST":
            self.error = invalid("Invalid value for 'method': only POST is supported.", "method", "invalid_value").body()
        elif item.get("url") != endpoint:
            self.error = invalid(f"Invalid value for 'url': this batch's endpoint is {endpoint}.", "url", "invalid_value").body()
        elif "body" not in item:
            self.error = invalid("Missing required parameter: 'body'.", "body", "missing_required_parameter").body()
        else:
            self.body = item["body"]


def parse(data: bytes, endpoint: str) -> list[Line]:
    lines, number = [], 0
    for number, text in enumerate(data.split(b"\n"), 1):
        if text.strip():
            lines.append(Line(len(lines), number, text, endpoint))
    return lines


def _input_size(body: Any) -> int:
    """About how long an embedding line's input is (its text's length), to group like lengths."""
    return len(str(body.get("input"))) if isinstance(body, dict) else 0


def output_file_id(batch_id: str, which: str) -> str:
    """The output/error file's id, the same however often the batch finalizes (a finalize cut
    short by a restart writes the same file again, not a second one)."""
    return "file-" + hashlib.sha256(f"{batch_id}:{which}".encode()).hexdigest()[:24]


class Slots:
    """Batch requests in flight, all batches together: up to ``high``, or ``low`` while online
    traffic is being served (until ``online_until``, on ``clock``). A drop to ``low`` stops new
    starts until the requests in flight are down to it (the runner also cuts the newest chat and
    completion lines short: :meth:`Runner.online_seen`)."""

    def __init__(self, high: int, low: int, clock=time.time) -> None:
        self.high, self.low, self.clock = high, min(low, high), clock
        self.in_flight = 0
        self.online_until = 0.0
        self._changed = asyncio.Event()

    def limit(self) -> int:
        return self.low if self.clock() < self.online_until else self.high

    def online(self, until: float) -> bool:
        """Online traffic was seen: keep to ``low`` until ``until`` at least. True when this
        starts a spell of online traffic (none was being held for). A hold that has already ended
        is no traffic: a front that never served an online request answers with the stamp 0."""
        if until <= self.online_until or until <= self.clock():
            return False
        starts = self.clock() >= self.online_until
        self.online_until = until
        self._changed.set()
        return starts

    async def acquire(self) -> None:
        while self.in_flight >= self.limit():
            self._changed.clear()
            left = self.online_until - self.clock()
            try:  # woken by a release, or when the online hold ends
                await asyncio.wait_for(self._changed.wait(), left if left > 0 else None)
            except asyncio.TimeoutError:
                pass
        self.in_flight += 1

    def release(self) -> None:
        self.in_flight -= 1
        self._changed.set()


class Runner:
    def __init__(self, store: Store, storage: FileStorage, execute: Execute, config: BatchConfig, clock=time.time) -> None:
        self.store, self.storage, self.execute, self.config, self.clock = store, storage, execute, config, clock
        self.slots = Slots(config.concurrency, config.concurrency_while_online, clock)
        # chat and completion line tasks in flight, oldest first, and those cut short to yield to online traffic
        self._yieldable: dict[asyncio.Task, None] = {}
        self._yielded: set[asyncio.Task] = set()
        self.tasks: dict[str, asyncio.Task] = {}
        self.executed = 0  # lines run (tries that got an answer), for tests and logs

    def online_seen(self, at: float) -> None:
        """A front replica served an online model request at ``at`` (its clock, ``time.time``).
        When that starts a spell of online traffic, the newest chat and completion lines in flight
        beyond ``batch.concurrency_while_online`` are cut short and go back to the head of their
        batch's queue (nothing of theirs was recorded, so each still runs exactly once): an engine
        step then carries few batch sequences beside the online request at once, not only once the
        lines in flight have finished. The newest have done the least work."""
        if not self.slots.online(at + self.config.online_hold_s):
            return
        current = asyncio.current_task()
        excess = self.slots.in_flight - self.slots.low
        newest = [task for task in reversed(self._yieldable) if task is not current][: max(excess, 0)]
        for task in newest:
            self._yieldable.pop(task, None)
            self._yielded.add(task)
            task.cancel()
        logger.info("Batch driver: online traffic; %d batch requests in flight, %d yielded, at most %d "
                    "until %.0f s after the last online request", self.slots.in_flight, len(newest),
                    self.slots.low, self.config.online_hold_s)

    def resume(self) -> list[str]:
        """Drive every batch the store has not finished (after a restart)."""
        ids = [b["id"] for b in self.store.active_batches(bp.ACTIVE)]
        for batch_id in ids:
            logger.info("Batch %s: resuming", batch_id)
            self.launch(batch_id)
        return ids

    def launch(self, batch_id: str) -> None:
        task = self.tasks.get(batch_id)
        if task is None or task.done():
            self.tasks[batch_id] = asyncio.get_running_loop().create_task(self._drive(batch_id))

    async def stop(self) -> None:
        """Stop driving (the process goes away): in-flight lines are dropped, unrecorded."""
        tasks = list(self.tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def wait(self, batch_id: str) -> None:
        task = self.tasks.get(batch_id)
        if task is not None:
            await asyncio.shield(task)

    def _now(self) -> int:
        return int(self.clock())

    async def _drive(self, batch_id: str) -> None:
        try:
            row = self.store.batch(batch_id)
            lines = None
            if row["status"] in (bp.VALIDATING, bp.IN_PROGRESS, bp.CANCELLING):
                try:
                    data = await asyncio.to_thread(self.storage.get, row["input_file_id"])
                except FileNotFoundError:
                    self._fail(batch_id, "input_file_missing", "The input file no longer exists.")
                    return
                lines = parse(data, row["endpoint"])
            if row["status"] == bp.VALIDATING:
                if not self._validate(batch_id, lines):
                    return
                self.store.update_batch(batch_id, total=len(lines))
                row = self.store.update_batch(batch_id, (bp.VALIDATING,), status=bp.IN_PROGRESS, in_progress_at=self._now(), total=len(lines))
                logger.info("Batch %s: in progress, %d lines (%s)", batch_id, len(lines), row["endpoint"])
            if row["status"] == bp.IN_PROGRESS:
                await self._run(row, lines)
                row = self.store.batch(batch_id)
            if row["status"] == bp.IN_PROGRESS:
                row = self.store.update_batch(batch_id, (bp.IN_PROGRESS,), status=bp.FINALIZING, finalizing_at=self._now())
            if row["status"] == bp.FINALIZING:
                self._finalize(row, bp.COMPLETED, "completed_at")
            elif row["status"] == bp.CANCELLING:
                self._finalize(row, bp.CANCELLED, "cancelled_at")
            elif row["status"] == bp.EXPIRED and row.get("expired_at") is None:
                for line in lines or []:
                    if line.index not in self.store.done_lines(batch_id):
                        error = {"code": "batch_expired", "message": "This request could not be executed before the completion window expired."}
                        self.store.record(batch_id, line.index, line.custom_id, False, bp.output_line(batch_id, line.index, line.custom_id, None, None, error))
                self._finalize(row, bp.EXPIRED, "expired_at")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the driver's own fault: the batch fails, visibly
            logger.exception("Batch %s: the driver failed", batch_id)
            self._fail(batch_id, "driver_error", f"The batch driver failed: {type(exc).__name__}")

    def _fail(self, batch_id: str, code: str, message: str, line: int | None = None) -> None:
        error = {"code": code, "message": message, "param": None, "line": line}
        self.store.update_batch(batch_id, status=bp.FAILED, failed_at=self._now(), errors=[error])
        logger.warning("Batch %s: failed: %s", batch_id, message)

    def _validate(self, batch_id: str, lines: list[Line]) -> bool:
        if not lines:
            self._fail(batch_id, "empty_file", "The input file has no request lines.")
            return False
        seen: dict[str, int] = {}
        for line in lines:
            if line.custom_id is not None:
                if line.custom_id in seen:
                    self._fail(batch_id, "duplicate_custom_id",
                               f"custom_id {line.custom_id!r} is on lines {seen[line.custom_id]} and {line.number}; each must be unique.", line.number)
                    return False
                seen[line.custom_id] = line.number
        model = next((l.body.get("model") for l in lines if isinstance(l.body, dict) and isinstance(l.body.get("model"), str)), None)
        self.store.update_batch(batch_id, model=model)
        return True

    async def _run(self, row: dict[str, Any], lines: list[Line]) -> None:
        batch_id, models = row["id"], row["_models"]
        done = self.store.done_lines(batch_id)
        todo = [line for line in lines if line.index not in done]
        logger.info("Batch %s: %d of %d lines to run", batch_id, len(todo), len(lines))
        progress = asyncio.get_running_loop().create_task(self._log_progress(batch_id, len(lines)))
        running: set[asyncio.Task] = set()
        try:
            # one request in flight per slot: a chat or completion line, or a group of embedding lines
            size = 1
            if row["endpoint"] == EMBEDDINGS:
                size = self.config.embedding_lines_per_request
                # shortest inputs first: the model pads each forward pass to its longest input, so
                # groups of like lengths waste the least (the output keeps the file's order)
                todo.sort(key=lambda line: _input_size(line.body))
            # groups still to run; a group yielded to online traffic comes back to the head
            pending = deque(todo[start : start + size] for start in range(0, len(todo), size))
            while pending or running:
                if not pending:  # all started: wait for one to finish (or to come back, yielded)
                    await asyncio.wait(set(running), return_when=asyncio.FIRST_COMPLETED)
                    continue
                await self.slots.acquire()
                status = self.store.batch(batch_id)["status"]
                if status != bp.IN_PROGRESS or self._expired(row):
                    self.slots.release()
                    break
                task = asyncio.get_running_loop().create_task(self._lines(row, pending.popleft(), models, pending))
                running.add(task)
                task.add_done_callback(running.discard)
                if row["endpoint"] != EMBEDDINGS:
                    self._yieldable[task] = None
            if running:  # cancelling / expired: lines in flight are abandoned, not recorded
                for task in list(running):
                    task.cancel()
                await asyncio.gather(*running, return_exceptions=True)
            if self._expired(row) and self.store.batch(batch_id)["status"] == bp.IN_PROGRESS:
                self.store.update_batch(batch_id, (bp.IN_PROGRESS,), status=bp.EXPIRED)
        finally:
            progress.cancel()
            for task in list(running):
                task.cancel()

    def _expired(self, row: dict[str, Any]) -> bool:
        return self._now() >= row["expires_at"]

    async def _lines(self, row: dict[str, Any], lines: list[Line], models: list[str] | None, pending: deque) -> None:
        """Run a group of lines in one request and record each line's answer as it is final:
        lines that meet a 503 (a model loading, a replica restarting: waited out, without using
        up tries, until the batch's window ends) or another retryable status go again. Lines cut
        short to yield to online traffic go back to the head of ``pending``, unrecorded."""
        todo = [line for line in lines if line.error is None]
        try:
            self._record(row["id"], [(line, 400, line.error) for line in lines if line.error is not None])
            tries: dict[int, int] = {}
            waits = 0
            while todo:
                answers = await self.execute(row["endpoint"], [line.body for line in todo], models)
                self.executed += len(todo)
                final, again, unavailable = [], [], False
                for line, (status, body) in zip(todo, answers):
                    if status == 503 and not self._expired(row):
                        again.append(line)
                        unavailable = True
                        continue
                    tries[line.index] = tries.get(line.index, 0) + 1
                    if status in RETRYABLE and tries[line.index] < self.config.max_attempts:
                        again.append(line)
                    else:
                        final.append((line, status, body))
                self._record(row["id"], final)
                todo = again
                if todo:
                    waits += unavailable
                    await asyncio.sleep(min(0.5 * 2**waits, 5.0) if unavailable else min(0.5 * 2 ** max(tries.values()), 10.0))
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task not in self._yielded:
                raise
            task.uncancel()
            if todo:
                pending.appendleft(todo)
        finally:
            task = asyncio.current_task()
            self._yieldable.pop(task, None)
            self._yielded.discard(task)  # also when cut as it finished: its answers were recorded
            self.slots.release()

    def _record(self, batch_id: str, answers: list[tuple[Line, int, Any]]) -> None:
        rows = []
        for line, status, body in answers:
            usage = (body.get("usage") if status == 200 and isinstance(body, dict) else None) or {}
            rows.append((line.index, line.custom_id, status == 200, bp.output_line(batch_id, line.index, line.custom_id, status, body),
                         int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)))
        if rows:
            self.store.record_many(batch_id, rows)

    async def _log_progress(self, batch_id: str, total: int) -> None:
        start, first = time.monotonic(), sum(self.store.counts(batch_id)[:2])
        while True:
            await asyncio.sleep(self.config.progress_log_s)
            completed, failed, _, _ = self.store.counts(batch_id)
            rate = (completed + failed - first) / max(time.monotonic() - start, 1e-9)
            logger.info("Batch %s: %d/%d lines done (%d completed, %d failed), %.1f lines/s",
                        batch_id, completed + failed, total, completed, failed, rate)

    def _finalize(self, row: dict[str, Any], final: str, stamp: str) -> None:
        batch_id, owner = row["id"], row["_owner"]
        fields: dict[str, Any] = {}
        for ok, which, name in ((True, "output", "output_file_id"), (False, "errors", "error_file_id")):
            results = self.store.results(batch_id, ok)
            if not results:
                continue
            data = ("\n".join(results) + "\n").encode()
            file_id = output_file_id(batch_id, which)
            self.storage.put(file_id, data)
            now = self._now()  # output_expires_after's anchor is the file's creation, not the batch's
            self.store.add_file(file_id, owner, f"{batch_id}_{which}.jsonl", "batch_output", len(data), len(results),
                                now, bp.expiry(now, row.get("output_expires_after")))
            fields[name] = file_id
        completed, failed, _, _ = self.store.counts(batch_id)
        self.store.update_batch(batch_id, status=final, **{stamp: self._now()}, **fields)
        logger.info("Batch %s: %s, %d completed, %d failed", batch_id, final, completed, failed)
