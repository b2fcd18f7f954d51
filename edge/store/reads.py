"""The store's reads: queries the worker, the CLI, status and the TUI make. No writes here."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from edge.clock import PLAUSIBLE_FROM, utc_now
from edge.errors import Code, EdgeError
from edge.store import schema
from edge.store.records import StoredResult

EVIDENCE_SUFFIX = ".evidence"


def evidence_beside(heatmap: str) -> str:
    """Where the evidence grid of a heatmap lives (edge.imaging.evidence): beside its PNG, same
    name, so every result that has one keeps it without a schema change, and results stored
    before it (a PNG alone) are told apart by the file being absent."""
    return str(Path(heatmap).with_suffix(EVIDENCE_SUFFIX))


def _dicts(cursor: sqlite3.Cursor) -> list[dict[str, Any]]:
    return [dict(row) for row in cursor.fetchall()]


class Reads:
    """The store's reads (`Store` is its one subclass: a store is read like this, and writes
    through its parts)."""

    def __init__(self, db: Database, data_dir: Path) -> None:
        self.db = db
        self.data_dir = data_dir

    def job(self, job_id: str) -> dict[str, Any] | None:
        return self._one("SELECT * FROM jobs WHERE id = ?", [job_id])

    def image(self, image_id: str) -> dict[str, Any] | None:
        return self._one("SELECT * FROM images WHERE id = ?", [image_id])

    def image_file(self, image_id: str) -> Path:
        row = self.image(image_id)
        if row is None:
            raise EdgeError(Code.INPUT_NOT_FOUND, f"image {image_id} is not in the store")
        return self.data_dir / row["path"]

    def heatmap_file(self, result_id: str) -> Path:
        """Where a result's heatmap overlay lives (written before its row commits)."""
        return self.data_dir / "heatmaps" / utc_now()[:10] / f"{result_id}.png"

    def result_for_job(self, job_id: str) -> StoredResult | None:
        row = self._one("SELECT * FROM results WHERE job_id = ?", [job_id])
        return StoredResult.from_row(row) if row is not None else None

    def result(self, result_id: str) -> StoredResult | None:
        row = self._one("SELECT * FROM results WHERE id = ?", [result_id])
        return StoredResult.from_row(row) if row is not None else None

    def counts(self) -> dict[str, int]:
        """Row counts per table and jobs per state (for status and tests)."""
        out = {
            table: int(self.db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
            for table in ("studies", "images", "jobs", "results", "outbox", "reviews", "audit")
        }
        for state in schema.JOB_STATES:
            out[f"jobs_{state}"] = int(
                self.db.execute("SELECT count(*) FROM jobs WHERE state = ?", [state]).fetchone()[0]
            )
        return out

    def audit_rows(self, action: str | None = None) -> Iterator[dict[str, Any]]:
        sql, params = "SELECT * FROM audit", []
        if action:
            sql, params = sql + " WHERE action = ?", [action]
        for row in self.db.execute(sql + " ORDER BY id", params).fetchall():
            yield dict(row)

    def clip_for_source(self, sha256: str, model_name: str) -> dict[str, Any] | None:
        """The clip this model already made of this file, if any (another model makes another)."""
        return self._one(
            "SELECT * FROM clips WHERE source_sha256 = ? AND model_name = ?", [sha256, model_name]
        )

    def clip_for_result(self, result_id: str) -> dict[str, Any] | None:
        row = self._one("SELECT * FROM clips WHERE result_id = ?", [result_id])
        if row is not None:
            for key in ("roi", "series", "key_frames", "events"):
                row[key] = json.loads(row[key]) if row.get(key) else None
        return row

    def purgeable_images(
        self, older_than: str, *, image_upload: bool, not_before: str = PLAUSIBLE_FROM
    ) -> list[dict[str, Any]]:
        """Images whose file may go: older than the retention horizon, no job of it waiting or
        running, every result of it acknowledged by the hub, and no upload of it still waiting.
        With `image_upload` (the site sends full images) the hub must also have acknowledged the
        image itself. Nothing the hub has not acknowledged is ever returned; an image that was
        refused (no result) goes after retention, since it never travels. An image whose result
        still waits to go back into the PACS stays too. An image's age counts from `aged_from`
        where a clock that was wrong stamped it (`Store.restart_misstamped_ages`), and an age
        from before `not_before` is no age: the image stays."""
        sql = (
            "SELECT i.id, i.path FROM images i WHERE i.purged_at IS NULL"
            " AND coalesce(i.aged_from, i.created_at) < ? AND coalesce(i.aged_from, i.created_at) >= ?"
            " AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.image_id = i.id"
            "  AND j.state IN ('queued', 'running'))"
            " AND NOT EXISTS (SELECT 1 FROM results r WHERE r.image_id = i.id AND NOT EXISTS"
            "  (SELECT 1 FROM outbox o WHERE o.kind = 'result' AND o.ref_id = r.id"
            "   AND o.acked_at IS NOT NULL))"
            " AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.kind IN ('image', 'thumbnail')"
            "  AND o.ref_id = i.id AND o.acked_at IS NULL)"
            # Thumbnails, heatmaps and cines are filed under their result and built from the
            # image when sent: deleted first, they were withdrawn from the hub for good.
            " AND NOT EXISTS (SELECT 1 FROM results r JOIN outbox o"
            "  ON o.kind IN ('thumbnail', 'heatmap', 'image', 'rendition', 'cine') AND o.ref_id = r.id"
            "  WHERE r.image_id = i.id AND o.acked_at IS NULL)"
            # The PACS exporter copies the source's patient and study from its file.
            " AND NOT EXISTS (SELECT 1 FROM pacs_exports p WHERE p.image_id = i.id"
            "  AND p.state = 'pending')"
        )
        if image_upload:
            sql += (
                " AND (NOT EXISTS (SELECT 1 FROM results r WHERE r.image_id = i.id)"
                "  OR EXISTS (SELECT 1 FROM outbox o WHERE o.kind = 'image' AND o.ref_id = i.id"
                "  AND o.acked_at IS NOT NULL))"
            )
        return _dicts(self.db.execute(sql, [older_than, not_before]))

    def referenced_files(self, study_id: str | None = None) -> list[str]:
        """Every file (path relative to the data directory) a row points at, once each: images
        not purged, result heatmaps, and each clip's key frames, their heatmaps and its video.
        With `study_id`, only that study's."""
        where, params = ("", []) if study_id is None else (" AND i.study_id = ?", [study_id])
        relative = [
            row[0]
            for row in self.db.execute("SELECT path FROM images i WHERE purged_at IS NULL" + where, params)
        ]
        for row in self.db.execute(
            "SELECT r.heatmap_path FROM results r JOIN images i ON i.id = r.image_id"
            " WHERE r.heatmap_path IS NOT NULL" + where,
            params,
        ):
            relative += [row[0], evidence_beside(row[0])]
        clips = self.db.execute(
            "SELECT c.key_frames, c.video_path FROM clips c JOIN results r ON r.id = c.result_id"
            " JOIN images i ON i.id = r.image_id WHERE 1 = 1" + where,
            params,
        )
        for key_frames, video_path in clips:
            for key in json.loads(key_frames or "[]"):
                relative += [p for p in (key.get("path"), key.get("heatmap")) if p]
                relative += [evidence_beside(key["heatmap"])] if key.get("heatmap") else []
            if video_path:
                relative.append(video_path)
        return list(dict.fromkeys(relative))

    def integrity(self) -> str:
        return str(self.db.execute("PRAGMA integrity_check").fetchone()[0])

    def last_result(self) -> dict[str, Any] | None:
        return self._one(
            "SELECT id, model_name, finding, probability, created_at FROM results"
            " ORDER BY rowid DESC LIMIT 1",  # the last made, whatever a wrong clock stamped
            [],
        )

    def recent_errors(self, limit: int = 5) -> list[dict[str, Any]]:
        return _dicts(
            self.db.execute(
                "SELECT id, state, error_code, error_message, updated_at FROM jobs"
                " WHERE error_code IS NOT NULL ORDER BY updated_at DESC LIMIT ?",
                [limit],
            )
        )

    def refused_inputs(self, actor: str, since: str) -> dict[str, Any]:
        """Inputs `actor` refused before anything was stored (audited `input.refused`, their code
        only) since `since`: how many, by code, and the newest's time. The DICOM listener's
        0xC000 answers were in the log and the audit table only: `edge status` says them."""
        rows = self.db.execute(
            "SELECT json_extract(detail, '$.code') AS code, count(*) AS n, max(at) AS newest"
            " FROM audit WHERE action = 'input.refused' AND actor = ? AND at >= ? GROUP BY code",
            [actor, since],
        ).fetchall()
        by_code = {str(row["code"]): int(row["n"]) for row in rows}
        return {
            "count": sum(by_code.values()),
            "by_code": by_code,
            "newest": max((str(row["newest"]) for row in rows), default=None),
        }

    def image_results(
        self,
        model_name: str,
        model_versions: Sequence[str],
        since: str | None = None,
        *,
        reviewed_only: bool = False,
    ) -> list[dict[str, Any]]:
        """Results of these model versions for single images (a clip's probability is a mean of
        frames, distributed otherwise), oldest first, each with the version that made it and the
        specialist's latest review where there is one (`verdict`, `review_finding`; NULL when
        unreviewed; `reviewed_only`: only those reviewed, chosen by the database, as a year's
        results may hold few). For a site's calibration and its prevalence estimate:
        probabilities, finding, profile, no identity."""
        versions = list(model_versions)
        if not versions:
            return []
        marks = ", ".join("?" * len(versions))
        return _dicts(
            self.db.execute(
                f"""
                SELECT r.id, r.model_version, r.finding, r.probabilities, r.profile_id, r.created_at,
                       v.verdict, v.finding AS review_finding
                FROM results r
                LEFT JOIN reviews v ON v.id = (
                    SELECT id FROM reviews WHERE result_id = r.id
                    ORDER BY reviewed_at DESC, id DESC LIMIT 1)
                WHERE r.model_name = ? AND r.model_version IN ({marks}) AND r.created_at >= ?
                  AND NOT EXISTS (SELECT 1 FROM clips c WHERE c.result_id = r.id)
                  AND (? = 0 OR v.id IS NOT NULL)
                ORDER BY r.created_at, r.id
                """,  # only "?" marks are formatted in
                [model_name, *versions, since or "", int(reviewed_only)],
            )
        )

    def _one(self, sql: str, params: Sequence[Any]) -> dict[str, Any] | None:
        row = self.db.execute(sql, list(params)).fetchone()
        return dict(row) if row else None
