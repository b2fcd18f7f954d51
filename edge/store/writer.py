"""The one object every write of the store goes through: a transaction that takes the write lock
first and turns a full disk into a coded refusal, plus the row helpers the parts share (insert,
audit row, outbox row, job row).

The store's parts (`Store` itself for ingest and the worker, `TechnicianActions`,
`OutboxAndReviews`) are each given this object; none reaches into another's private methods.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from edge.clock import utc_now
from edge.errors import Code, EdgeError
from edge.ids import uuid7

_DISK_FULL_MARKERS = ("database or disk is full", "disk i/o error")


class Writer:
    def __init__(self, db: Database, data_dir: Path) -> None:
        self.db = db
        self.data_dir = data_dir

    @contextlib.contextmanager
    def transaction(self, what: str) -> Iterator[None]:
        """One write transaction; `what` names it in the disk-full refusal ("cannot {what}").

        It takes the write lock first (BEGIN IMMEDIATE): a deferred transaction that reads, then
        writes, fails at once with "database is locked" when another connection committed in
        between (its snapshot is stale, and SQLite's busy handler does not help); taking the lock
        up front makes concurrent writers (the DICOM listener's threads, the worker, a CLI) queue
        on the busy timeout instead. Nested, it is part of the enclosing transaction.
        """
        try:
            if self.db.conn.in_transaction:
                yield
                return
            self.db.conn.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                if self.db.conn.in_transaction:
                    self.db.conn.execute("ROLLBACK")
                raise
            try:
                self.db.conn.execute("COMMIT")
            except BaseException:  # e.g. the disk filled at commit: nothing of it may stay pending
                if self.db.conn.in_transaction:
                    self.db.conn.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as exc:
            if any(marker in str(exc).lower() for marker in _DISK_FULL_MARKERS):
                raise EdgeError(Code.DISK_FULL, f"cannot {what}: the disk is full") from exc
            raise

    def insert(self, table: str, row: dict[str, Any]) -> None:
        columns = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        self.db.execute(f"INSERT INTO {table} ({columns}) VALUES ({marks})", list(row.values()))

    def audit(self, actor: str, action: str, subject_id: str | None, detail: dict[str, Any]) -> None:
        """An audit row, inside the caller's transaction. `detail` never carries free text (a
        note may name a patient): ids, codes and counts only."""
        self.insert(
            "audit",
            {
                "id": uuid7(),
                "at": utc_now(),
                "actor": actor,
                "action": action,
                "subject_id": subject_id,
                "detail": json.dumps(detail, sort_keys=True),
            },
        )

    def enqueue_outbox(self, kind: str, ref_id: str, payload: dict[str, Any]) -> None:
        """A row for the sync agent, inside the transaction of the change it reports."""
        self.insert(
            "outbox",
            {
                "id": uuid7(),
                "kind": kind,
                "ref_id": ref_id,
                "payload": json.dumps(payload, sort_keys=True),
                "created_at": utc_now(),
            },
        )

    def insert_job(self, image_id: str, model_name: str, now: str, **columns: Any) -> str:
        """A new job row (queued unless `columns` say otherwise); its id."""
        job_id = uuid7()
        self.insert(
            "jobs",
            {
                "id": job_id,
                "image_id": image_id,
                "model_name": model_name,
                "state": "queued",
                "created_at": now,
                "updated_at": now,
                **columns,
            },
        )
        return job_id
