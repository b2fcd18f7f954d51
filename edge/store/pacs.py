"""The store's writes and reads for the PACS exporter (edge/interop): its queue of instances to
send back into the hospital's PACS, and its own state.

Each state change is one transaction. A row is queued once per (result, kind) (`INSERT OR
IGNORE` on that pair), is `pending` until the PACS has answered success, and only then `sent`:
a crash between the answer and the commit sends the same SOP Instance UID again, which the PACS
keeps once.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from edge.clock import utc_after, utc_now
from edge.ids import uuid7
from edge.store.writer import Writer

EXPORT_KINDS = ("sr", "heatmap")


@dataclass(frozen=True)
class NewExport:
    """A row to queue: `sop_instance_uid` None and `skipped` set for what cannot be sent."""

    result_id: str
    image_id: str
    kind: str
    sop_instance_uid: str | None
    skipped: str | None = None


@dataclass(frozen=True)
class PacsExport:
    id: str
    result_id: str
    image_id: str
    kind: str
    sop_instance_uid: str | None
    state: str
    reason: str | None
    attempts: int
    next_attempt_at: str | None
    last_error: str | None
    status: str | None
    destination: str | None
    created_at: str
    sent_at: str | None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> PacsExport:
        row = dict(row)
        row.pop("updated_at", None)
        return cls(**row)


class PacsExports:
    """`PacsExports(store.writer)`: the exporter's queue (it writes through the store's one
    `Writer`, like every other part)."""

    def __init__(self, writer: Writer) -> None:
        self.writer = writer
        self.db = writer.db

    # ------------------------------------------------------------------ queueing

    def results_without_exports(self, limit: int) -> list[dict[str, Any]]:
        """Results no export row names yet, oldest first, with what deciding about them needs."""
        rows = self.db.execute(
            "SELECT r.id AS result_id, r.image_id, r.created_at, r.heatmap_path, i.format,"
            " i.path, i.purged_at, i.sop_instance_uid AS source_uid,"
            # kept beside the object holding its UID (image.uid_collision): in the PACS that UID
            # is the other object, so a result referencing it would describe the wrong image
            " (i.format = 'dicom' AND i.sop_instance_uid IS NULL AND i.superseded_by IS NULL)"
            " AS uid_collision FROM results r"
            " JOIN images i ON i.id = r.image_id"
            " WHERE NOT EXISTS (SELECT 1 FROM pacs_exports p WHERE p.result_id = r.id)"
            " ORDER BY r.created_at LIMIT ?",
            [limit],
        ).fetchall()
        return [dict(row) for row in rows]

    def reports_replaced_by(self, result_id: str) -> list[tuple[str, str, str, str]]:
        """(SOP Instance UID, model, version, state) of the reports queued for the PACS of the
        earlier results of this result's model on its image or on the versions that image
        replaced (a re-analysis, a corrected instance): what its own report names as
        predecessors, those the PACS took (`sent`)."""
        rows = self.db.execute(
            # The image and every version it replaced, one correction after another: a version
            # whose report failed in between must not hide the one before it.
            "WITH RECURSIVE versions(id) AS ("
            " SELECT image_id FROM results WHERE id = ?"
            " UNION SELECT i.id FROM images i JOIN versions v ON i.superseded_by = v.id)"
            " SELECT p.sop_instance_uid, o.model_name, o.model_version, p.state FROM results n"
            " JOIN results o ON o.model_name = n.model_name AND o.rowid < n.rowid"
            " JOIN pacs_exports p ON p.result_id = o.id AND p.kind = 'sr'"
            " AND p.sop_instance_uid IS NOT NULL AND p.state != 'skipped'"
            " WHERE n.id = ? AND o.image_id IN (SELECT id FROM versions)"
            " ORDER BY o.rowid",
            [result_id, result_id],
        ).fetchall()
        return [(str(row[0]), str(row[1]), str(row[2]), str(row[3])) for row in rows]

    def queue(self, exports: Sequence[NewExport]) -> int:
        """Queue rows in one transaction; a (result, kind) already queued is left as it is."""
        added = 0
        now = utc_now()
        with self.writer.transaction("queue PACS exports"):
            for export in exports:
                cursor = self.db.execute(
                    "INSERT OR IGNORE INTO pacs_exports (id, result_id, image_id, kind, sop_instance_uid,"
                    " state, reason, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        uuid7(),
                        export.result_id,
                        export.image_id,
                        export.kind,
                        export.sop_instance_uid,
                        "skipped" if export.skipped else "pending",
                        export.skipped,
                        now,
                        now,
                    ],
                )
                added += cursor.rowcount
            if added:
                self.writer.audit("pacs", "pacs.queued", None, {"rows": added})
        return added

    # ------------------------------------------------------------------ sending

    def due(self, limit: int, latest_wait_s: float, now: str | None = None) -> list[PacsExport]:
        """Pending rows whose next attempt is due, oldest result first, its SR before its heatmap.
        A next attempt more than `latest_wait_s` (the longest backoff) ahead was set by a clock
        that was ahead: it is due (it waited until that year)."""
        rows = self.db.execute(
            "SELECT * FROM pacs_exports WHERE state = 'pending'"
            " AND (next_attempt_at IS NULL OR next_attempt_at <= ? OR next_attempt_at > ?)"
            " ORDER BY created_at, result_id, kind DESC LIMIT ?",
            [now or utc_now(), utc_after(latest_wait_s), limit],
        ).fetchall()
        return [PacsExport.from_row(dict(row)) for row in rows]

    def mark_sent(self, export_id: str, status: str, destination: str) -> None:
        now = utc_now()
        with self.writer.transaction("record a PACS export"):
            self.db.execute(
                "UPDATE pacs_exports SET state = 'sent', status = ?, destination = ?, sent_at = ?,"
                " updated_at = ?, next_attempt_at = NULL, last_error = NULL"
                " WHERE id = ? AND state = 'pending'",
                [status, destination, now, now, export_id],
            )
            self.writer.audit("pacs", "pacs.sent", export_id, {"status": status})

    def mark_attempt(
        self, export_id: str, error: str, next_attempt_at: str, *, status: str | None, give_up: bool
    ) -> None:
        """A refused or interrupted send: counted, retried at `next_attempt_at`, or `failed`."""
        now = utc_now()
        with self.writer.transaction("record a PACS export attempt"):
            self.db.execute(
                "UPDATE pacs_exports SET attempts = attempts + 1, last_error = ?, status = ?,"
                " next_attempt_at = ?, updated_at = ?, state = ?, reason = ?"
                " WHERE id = ? AND state = 'pending'",
                [
                    error[:300],
                    status,
                    next_attempt_at,
                    now,
                    "failed" if give_up else "pending",
                    error[:300] if give_up else None,
                    export_id,
                ],
            )
            if give_up:
                self.writer.audit("pacs", "pacs.failed", export_id, {"status": status})

    def skip(self, export_id: str, reason: str) -> None:
        """A queued row that turned out to have nothing to send (its source file is gone)."""
        now = utc_now()
        with self.writer.transaction("record a skipped PACS export"):
            self.db.execute(
                "UPDATE pacs_exports SET state = 'skipped', reason = ?, updated_at = ?"
                " WHERE id = ? AND state = 'pending'",
                [reason[:300], now, export_id],
            )

    def retry_now(self, *, failed_too: bool) -> int:
        """Pending rows due at once (and, with `failed_too`, failed ones queued again)."""
        now = utc_now()
        with self.writer.transaction("retry PACS exports"):
            changed = self.db.execute(
                "UPDATE pacs_exports SET next_attempt_at = NULL, updated_at = ?"
                " WHERE state = 'pending' AND next_attempt_at IS NOT NULL",
                [now],
            ).rowcount
            if failed_too:
                changed += self.db.execute(
                    "UPDATE pacs_exports SET state = 'pending', attempts = 0, next_attempt_at = NULL,"
                    " reason = NULL, updated_at = ? WHERE state = 'failed'",
                    [now],
                ).rowcount
        return int(changed)

    def resend_sent(self, since: str, actor: str) -> tuple[int, int]:
        """Objects the PACS took on or after `since` (a stamp or a date) queued again, the same
        instances (their UIDs never change, so a PACS keeps one copy): for a PACS restored from
        a backup that lacks them, or one that answered Success and dropped them. Audited. Those
        whose source image retention deleted cannot be built again: they stay `sent` (queued,
        they ended "skipped: purged before export", their record lost). Returns (queued, left)."""
        now = utc_now()
        sent = "state = 'sent' AND sent_at >= ?"
        gone = "image_id IN (SELECT id FROM images WHERE purged_at IS NOT NULL)"
        with self.writer.transaction("queue sent PACS exports again"):
            left = self.db.execute(f"SELECT count(*) FROM pacs_exports WHERE {sent} AND {gone}", [since])
            left_count = int(left.fetchone()[0])
            changed = self.db.execute(
                "UPDATE pacs_exports SET state = 'pending', attempts = 0, next_attempt_at = NULL,"
                " reason = NULL, last_error = NULL, status = NULL, updated_at = ?"
                f" WHERE {sent} AND NOT {gone}",
                [now, since],
            ).rowcount
            if changed or left_count:
                detail = {"since": since, "objects": changed, "source_deleted": left_count}
                self.writer.audit(actor, "pacs.resend", None, detail)
        return int(changed), left_count

    # ------------------------------------------------------------------ reads

    def counts(self) -> dict[str, int]:
        rows = self.db.execute("SELECT state, count(*) FROM pacs_exports GROUP BY state").fetchall()
        return {row[0]: int(row[1]) for row in rows}

    def oldest_pending(self) -> str | None:
        row = self.db.execute("SELECT min(created_at) FROM pacs_exports WHERE state = 'pending'").fetchone()
        return str(row[0]) if row and row[0] else None

    def exports_for_result(self, result_id: str) -> list[PacsExport]:
        rows = self.db.execute(
            "SELECT * FROM pacs_exports WHERE result_id = ? ORDER BY kind DESC", [result_id]
        ).fetchall()
        return [PacsExport.from_row(dict(row)) for row in rows]

    def recent(self, state: str, limit: int = 5) -> list[PacsExport]:
        rows = self.db.execute(
            "SELECT * FROM pacs_exports WHERE state = ? ORDER BY updated_at DESC LIMIT ?", [state, limit]
        ).fetchall()
        return [PacsExport.from_row(dict(row)) for row in rows]

    def skip_reasons(self) -> dict[str, int]:
        rows = self.db.execute(
            "SELECT reason, count(*) FROM pacs_exports WHERE state = 'skipped' GROUP BY reason"
        ).fetchall()
        return {str(row[0]): int(row[1]) for row in rows}

    # ------------------------------------------------------------------ the exporter's state

    def set_state(self, **values: Any) -> None:
        now = utc_now()
        with self.writer.transaction("record the PACS exporter's state"):
            for key, value in values.items():
                self.db.execute(
                    "INSERT INTO pacs_state (key, value, updated_at) VALUES (?, ?, ?)"
                    " ON CONFLICT(key) DO UPDATE SET value = excluded.value,"
                    " updated_at = excluded.updated_at",
                    [key, json.dumps(value), now],
                )

    def state(self) -> dict[str, Any]:
        return {row[0]: json.loads(row[1]) for row in self.db.execute("SELECT key, value FROM pacs_state")}
