"""The store's writes and reads for the sync agent: outbox acknowledgement, upload tasks,
reviews applied with their cursor, and the agent's own state."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from edge.clock import utc_now
from edge.store.writer import Writer


class OutboxAndReviews:
    """`store.outbox`: what the sync agent reads and marks (it writes through the store's one
    `Writer`)."""

    def __init__(self, writer: Writer) -> None:
        self.writer = writer
        self.db = writer.db

    # ------------------------------------------------------------------ outbox

    def pending_outbox(self, kinds: Sequence[str], limit: int) -> list[dict[str, Any]]:
        """Rows the hub has not acknowledged, oldest first (results by their gapless sequence)."""
        marks = ", ".join("?" for _ in kinds)
        rows = self.db.execute(
            f"SELECT * FROM outbox WHERE acked_at IS NULL AND kind IN ({marks}) ORDER BY seq LIMIT ?",
            [*kinds, limit],
        ).fetchall()
        return [dict(row) for row in rows]

    def mark_acked(self, outbox_ids: Sequence[str], note: str | None = None) -> None:
        if not outbox_ids:
            return
        now = utc_now()
        with self.writer.transaction("acknowledge synced records"):
            for outbox_id in outbox_ids:
                self.db.execute(
                    "UPDATE outbox SET acked_at = ?, sent_at = coalesce(sent_at, ?), last_error = ?"
                    " WHERE id = ? AND acked_at IS NULL",
                    [now, now, note, outbox_id],
                )

    def mark_attempt(self, outbox_ids: Sequence[str], error: str | None) -> None:
        if not outbox_ids:
            return
        with self.writer.transaction("record a sync attempt"):
            for outbox_id in outbox_ids:
                self.db.execute(
                    "UPDATE outbox SET attempts = attempts + 1, sent_at = ?, last_error = ? WHERE id = ?",
                    [utc_now(), error, outbox_id],
                )

    def send_result_again(self, result_id: str) -> bool:
        """The result's row waits to go again (the hub said it does not hold it: a hub restored
        from an older backup); False when there is no acknowledged row of it to send."""
        with self.writer.transaction("send a result again"):
            changed = self.db.execute(
                "UPDATE outbox SET acked_at = NULL, last_error = ? WHERE kind = 'result' AND ref_id = ?"
                " AND acked_at IS NOT NULL",
                ["the hub did not hold it: sent again", result_id],
            ).rowcount
        return bool(changed)

    def add_upload_tasks(self, tasks: Sequence[tuple[str, str, dict[str, Any]]]) -> int:
        """(kind, ref_id, payload) upload tasks, each once (a second call adds nothing)."""
        added = 0
        with self.writer.transaction("queue uploads"):
            for kind, ref_id, payload in tasks:
                exists = self.db.execute(
                    "SELECT 1 FROM outbox WHERE kind = ? AND ref_id = ?", [kind, ref_id]
                ).fetchone()
                if exists:
                    continue
                self.writer.enqueue_outbox(kind, ref_id, payload)
                added += 1
        return added

    def acked_results_without_uploads(self, kind: str, limit: int = 500) -> list[dict[str, Any]]:
        """Results the hub has, for which no `kind` upload task exists yet (results travel first)."""
        ref = "r.image_id" if kind == "image" else "r.id"
        rows = self.db.execute(
            "SELECT r.id AS result_id, r.image_id, r.heatmap_path, i.path, i.format, i.meta FROM results r"
            " JOIN images i ON i.id = r.image_id"
            " JOIN outbox o ON o.kind = 'result' AND o.ref_id = r.id AND o.acked_at IS NOT NULL"
            f" WHERE NOT EXISTS (SELECT 1 FROM outbox u WHERE u.kind = ? AND u.ref_id = {ref})"
            " AND i.purged_at IS NULL ORDER BY r.created_at LIMIT ?",
            [kind, limit],
        ).fetchall()
        return [dict(row) for row in rows]

    def results_due_a_rendition(
        self, only_urgent: bool, limit: int = 500, kind: str = "rendition"
    ) -> list[dict[str, Any]]:
        """Results the hub has, with no `kind` task yet ("rendition", or "cine": only clips
        with a video): with `only_urgent`, only positive findings (current results) and results
        of flagged studies (issue 20's "urgent")."""
        if kind not in ("rendition", "cine"):
            raise ValueError(f"not a diagnostic upload kind: {kind}")
        clips = (
            " AND EXISTS (SELECT 1 FROM clips c WHERE c.result_id = r.id AND c.video_path IS NOT NULL)"
            if kind == "cine"
            else ""
        )
        urgent = (
            " AND ((r.finding IS NOT NULL AND r.finding = r.finding_label AND i.superseded_by IS NULL)"
            " OR s.urgent = 1)"
            if only_urgent
            else ""
        )
        rows = self.db.execute(
            "SELECT r.id AS result_id, r.image_id FROM results r"
            " JOIN images i ON i.id = r.image_id JOIN studies s ON s.id = i.study_id"
            " JOIN outbox o ON o.kind = 'result' AND o.ref_id = r.id AND o.acked_at IS NOT NULL"
            " WHERE NOT EXISTS (SELECT 1 FROM outbox u WHERE u.kind = ? AND u.ref_id = r.id)"
            f" AND i.purged_at IS NULL{clips}{urgent} ORDER BY r.created_at LIMIT ?",
            [kind, limit],
        ).fetchall()
        return [dict(row) for row in rows]

    def pending_counts(self) -> dict[str, int]:
        rows = self.db.execute(
            "SELECT kind, count(*) FROM outbox WHERE acked_at IS NULL GROUP BY kind"
        ).fetchall()
        return {row[0]: int(row[1]) for row in rows}

    # ------------------------------------------------------------------ reviews

    def apply_reviews(self, reviews: Sequence[dict[str, Any]], cursor: int) -> int:
        """Reviews and the cursor that fetched them commit together: a crash repeats the pull,
        and a review already here is not added twice."""
        added = 0
        with self.writer.transaction("store reviews"):
            for review in reviews:
                known = self.db.execute("SELECT 1 FROM reviews WHERE id = ?", [review["id"]]).fetchone()
                exists = self.db.execute(
                    "SELECT 1 FROM results WHERE id = ?", [review["result_uuid"]]
                ).fetchone()
                if known or not exists:
                    continue
                self.writer.insert(
                    "reviews",
                    {
                        "id": review["id"],
                        "result_id": review["result_uuid"],
                        "verdict": review["verdict"],
                        "finding": review.get("finding"),
                        "note": review.get("note"),
                        "reviewer_role": review.get("reviewer_role"),
                        "reviewed_at": review["reviewed_at"],
                        "received_at": utc_now(),
                    },
                )
                self.writer.audit(
                    "sync", "review.received", review["result_uuid"], {"verdict": review["verdict"]}
                )
                added += 1
            self._set_state("review_cursor", cursor)
        return added

    # ------------------------------------------------------------------ state

    def _set_state(self, key: str, value: Any) -> None:
        self.db.execute(
            "INSERT INTO sync_state (key, value, updated_at) VALUES (?, ?, ?)"
            " ON CONFLICT(key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
            [key, json.dumps(value), utc_now()],
        )

    def set_sync_state(self, **values: Any) -> None:
        with self.writer.transaction("record the sync state"):
            for key, value in values.items():
                self._set_state(key, value)

    def sync_state(self) -> dict[str, Any]:
        return {row[0]: json.loads(row[1]) for row in self.db.execute("SELECT key, value FROM sync_state")}
