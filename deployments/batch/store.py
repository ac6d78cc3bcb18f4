"""Batch and file metadata, and each line's recorded result, in SQLite.

A line's result is written once, keyed by ``(batch_id, line)`` (``INSERT OR IGNORE``), before it
counts: the counts are read from the results themselves, so a driver that dies after running a
line but before recording it runs it again, and one that recorded it never runs or counts it
twice. The output and error files are assembled from these rows when the batch finalizes.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from typing import Any

from deployments.jsontext import dumps_str

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, owner TEXT NOT NULL,
    filename TEXT NOT NULL, purpose TEXT NOT NULL, bytes INTEGER NOT NULL, lines INTEGER,
    created_at INTEGER NOT NULL, expires_at INTEGER
);
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, owner TEXT NOT NULL,
    models TEXT, row TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS results (
    batch_id TEXT NOT NULL, line INTEGER NOT NULL, custom_id TEXT, ok INTEGER NOT NULL,
    output TEXT NOT NULL, input_tokens INTEGER NOT NULL DEFAULT 0, output_tokens INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (batch_id, line)
);
"""


class Store:
    def __init__(self, path: str) -> None:
        if path != ":memory:":
            path = os.path.abspath(os.path.expanduser(path))
            os.makedirs(os.path.dirname(path), exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        self._db.close()

    def _q(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # ------------------------------------------------------------------ files
    def add_file(self, id: str, owner: str, filename: str, purpose: str, size: int, lines: int | None,
                 created_at: int | None = None, expires_at: int | None = None) -> dict[str, Any]:
        created_at = int(time.time()) if created_at is None else created_at
        self._q(
            "INSERT OR REPLACE INTO files (id, owner, filename, purpose, bytes, lines, created_at, expires_at) VALUES (?,?,?,?,?,?,?,?)",
            (id, owner, filename, purpose, size, lines, created_at, expires_at),
        )
        return self.file(id, owner)

    def file(self, id: str, owner: str) -> dict[str, Any] | None:
        rows = self._q("SELECT * FROM files WHERE id=? AND owner=?", (id, owner))
        return dict(rows[0]) if rows else None

    def files(self, owner: str, purpose: str | None, after: str | None, limit: int, order: str, now: float) -> tuple[list[dict], bool]:
        """A page of the owner's files that have not expired by ``now``."""
        sql, args = "SELECT * FROM files WHERE owner=? AND (expires_at IS NULL OR expires_at > ?)", [owner, now]
        if purpose:
            sql, args = sql + " AND purpose=?", args + [purpose]
        op = ">" if order == "asc" else "<"
        if after:
            sql += f" AND seq {op} COALESCE((SELECT seq FROM files WHERE id=? AND owner=?), {'-1' if order == 'asc' else '1e18'})"
            args += [after, owner]
        sql += f" ORDER BY seq {'ASC' if order == 'asc' else 'DESC'} LIMIT ?"
        rows = [dict(r) for r in self._q(sql, tuple(args + [limit + 1]))]
        return rows[:limit], len(rows) > limit

    def expired_files(self, now: float) -> list[str]:
        """The ids of every owner's files expired by ``now``."""
        return [r["id"] for r in self._q("SELECT id FROM files WHERE expires_at IS NOT NULL AND expires_at <= ?", (now,))]

    def delete_file(self, id: str, owner: str | None = None) -> bool:
        if owner is None:
            with self._lock:
                return self._db.execute("DELETE FROM files WHERE id=?", (id,)).rowcount > 0
        with self._lock:
            return self._db.execute("DELETE FROM files WHERE id=? AND owner=?", (id, owner)).rowcount > 0

    # ------------------------------------------------------------------ batches
    def add_batch(self, row: dict[str, Any], owner: str, models: list[str] | None) -> None:
        self._q(
            "INSERT INTO batches (id, owner, models, row) VALUES (?,?,?,?)",
            (row["id"], owner, json.dumps(models), json.dumps(row)),
        )

    def batch(self, id: str, owner: str | None = None) -> dict[str, Any] | None:
        """The batch's row (``owner``: only if it is theirs), with ``_owner`` and ``_models``."""
        if owner is None:
            rows = self._q("SELECT * FROM batches WHERE id=?", (id,))
        else:
            rows = self._q("SELECT * FROM batches WHERE id=? AND owner=?", (id, owner))
        if not rows:
            return None
        return {**json.loads(rows[0]["row"]), "_owner": rows[0]["owner"], "_models": json.loads(rows[0]["models"])}

    def update_batch(self, id: str, only_from: tuple[str, ...] | None = None, **fields: Any) -> dict[str, Any]:
        """Set ``fields`` in the batch's row (one transaction: read, change, write); with
        ``only_from``, only while its status is one of those (a cancel that came first stands)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                (text,) = self._db.execute("SELECT row FROM batches WHERE id=?", (id,)).fetchone()
                row = json.loads(text)
                if only_from is None or row["status"] in only_from:
                    row.update(fields)
                self._db.execute("UPDATE batches SET row=? WHERE id=?", (json.dumps(row), id))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return self.batch(id)

    def batches(self, owner: str, after: str | None, limit: int) -> tuple[list[dict], bool]:
        sql, args = "SELECT id FROM batches WHERE owner=?", [owner]
        if after:
            sql += " AND seq < COALESCE((SELECT seq FROM batches WHERE id=? AND owner=?), 1e18)"
            args += [after, owner]
        rows = self._q(sql + " ORDER BY seq DESC LIMIT ?", tuple(args + [limit + 1]))
        ids = [r["id"] for r in rows]
        return [self.batch(i) for i in ids[:limit]], len(ids) > limit

    def active_batches(self, statuses: tuple[str, ...]) -> list[dict[str, Any]]:
        rows = self._q("SELECT id FROM batches ORDER BY seq ASC")
        batches = [self.batch(r["id"]) for r in rows]
        return [b for b in batches if b["status"] in statuses]

    # ------------------------------------------------------------------ results
    def record(self, batch_id: str, line: int, custom_id: str | None, ok: bool, output: dict[str, Any],
               input_tokens: int = 0, output_tokens: int = 0) -> bool:
        """Record a line's result once; False if it was already recorded (that one stands)."""
        return self.record_many(batch_id, [(line, custom_id, ok, output, input_tokens, output_tokens)]) > 0

    def record_many(self, batch_id: str, rows: list[tuple[int, str | None, bool, dict[str, Any], int, int]]) -> int:
        """Record lines' results ``(line, custom_id, ok, output, input_tokens, output_tokens)`` in
        one transaction, each once; returns how many were new (an already recorded one stands)."""
        values = [(batch_id, line, cid, int(ok), dumps_str(out), inp, outp) for line, cid, ok, out, inp, outp in rows]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                before = self._db.total_changes
                self._db.executemany("INSERT OR IGNORE INTO results VALUES (?,?,?,?,?,?,?)", values)
                added = self._db.total_changes - before
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return added

    def done_lines(self, batch_id: str) -> set[int]:
        return {r["line"] for r in self._q("SELECT line FROM results WHERE batch_id=?", (batch_id,))}

    def counts(self, batch_id: str) -> tuple[int, int, int, int]:
        """(completed, failed, input_tokens, output_tokens) from the recorded results."""
        row = self._q(
            "SELECT COALESCE(SUM(ok),0), COUNT(*)-COALESCE(SUM(ok),0), COALESCE(SUM(input_tokens),0), "
            "COALESCE(SUM(output_tokens),0) FROM results WHERE batch_id=?",
            (batch_id,),
        )[0]
        return int(row[0]), int(row[1]), int(row[2]), int(row[3])

    def results(self, batch_id: str, ok: bool) -> list[str]:
        """The recorded output lines (JSON text) of the successes or the failures, in input order."""
        rows = self._q("SELECT output FROM results WHERE batch_id=? AND ok=? ORDER BY line", (batch_id, int(ok)))
        return [r["output"] for r in rows]
