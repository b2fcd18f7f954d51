"""The technician's side of the store: the worklist's reads and the marks a person makes on it.

A part of `Store` (`store.technician`), so these are still the only SQL writes on the device:
every write is one transaction (`Writer.transaction`, with the disk-full refusal) with its audit
row. Audit
details never carry free text (a note may name a patient), only ids and counts.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from edge.clock import utc_now
from edge.errors import Code, EdgeError
from edge.ids import uuid7
from edge.store.files import remove_quietly
from edge.store.reads import EVIDENCE_SUFFIX, Reads, evidence_beside
from edge.store.records import WorklistItem
from edge.store.writer import Writer

URGENT_PRIORITY = 10  # queued jobs of an urgent study are claimed before everything else
MAX_NOTE_CHARS = 2000
WITHDRAWN_NOTE = "withdrawn: the study was deleted on the device"

# One row per job (an image analysed by one model): what the worklist shows and filters on.
_WORKLIST_SELECT = """
SELECT j.id AS job_id, j.state, j.error_code, j.error_message, j.model_name,
       j.created_at AS queued_at, j.updated_at,
       i.id AS image_id, i.phi_original_name, i.format, i.width, i.height, i.frames, i.purged_at,
       i.superseded_by IS NOT NULL AS superseded,
       s.id AS study_id, s.urgent, s.modality, s.body_part, s.description, s.source,
       s.phi_patient_name, s.phi_patient_id, s.phi_accession, s.patient_age_years, s.patient_sex,
       s.study_date, s.received_at,
       r.id AS result_id, r.finding, r.finding_label, r.probability, r.threshold, r.operating_point,
       r.seen_at, r.seen_by,
       json_extract(r.applicability, '$.state') AS applicability_state,
       json_extract(r.applicability, '$.p_value') AS applicability_p,
       (SELECT v.verdict FROM reviews v WHERE v.result_id = r.id
         ORDER BY v.reviewed_at DESC LIMIT 1) AS review_verdict,
       (SELECT v.finding FROM reviews v WHERE v.result_id = r.id
         ORDER BY v.reviewed_at DESC LIMIT 1) AS review_finding,
       (SELECT max(v.received_at) FROM reviews v WHERE v.result_id = r.id) AS review_received_at,
       (SELECT count(*) FROM notes n WHERE n.study_id = s.id) AS notes,
       EXISTS(SELECT 1 FROM outbox o WHERE o.kind = 'result' AND o.ref_id = r.id
              AND o.acked_at IS NOT NULL) AS at_hub
FROM jobs j
JOIN images i ON i.id = j.image_id
JOIN studies s ON s.id = i.study_id
LEFT JOIN results r ON r.job_id = j.id
"""

_SEARCHED_COLUMNS = (
    "s.phi_patient_name",
    "s.phi_patient_id",
    "s.phi_accession",
    "s.description",
    "s.modality",
    "s.body_part",
    "i.phi_original_name",
    "j.model_name",
    "j.error_code",
    "r.finding",
)

# A current (not superseded) result whose finding is the one the model looks for: with a flagged
# study, what "urgent" means on the worklist (its filter and its order).
_POSITIVE = "(r.finding IS NOT NULL AND r.finding = r.finding_label AND i.superseded_by IS NULL)"
# A specialist who disagrees, in a reply the technician has not marked seen: a child to recall or
# a film to repeat, urgent until it is seen (a TUI audit found one at row 193 of 500, ordered as
# an ordinary old normal result, and outside the urgent-only filter).
NEW_DISAGREEMENT = (  # coalesce: never NULL, which DESC would order after every 0
    "(coalesce(review_verdict, '') = 'disagree' AND (r.seen_at IS NULL OR review_received_at > r.seen_at))"
)


def _like_pattern(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


class TechnicianActions:
    """`store.technician`: the worklist and the marks a person makes. Writes go through the
    store's one `Writer`; the files a study owns are found by the store's reads."""

    def __init__(self, writer: Writer, reads: Reads) -> None:
        self.writer = writer
        self.reads = reads
        self.db = writer.db
        self.data_dir = writer.data_dir

    # ------------------------------------------------------------------ reads

    def worklist(
        self,
        *,
        search: str | None = None,
        states: Sequence[str] = (),
        urgent_only: bool = False,
        unseen_only: bool = False,
        positive_counts_as_urgent: bool = False,
        limit: int = 500,
    ) -> list[WorklistItem]:
        """Jobs with their study, image, result and latest review: urgent studies first, then the
        newest work. With `positive_counts_as_urgent` (the TUI), a positive finding and a
        specialist's disagreement not yet seen are urgent too: flagged studies first, then those
        disagreements, then positive findings, then the newest; `urgent_only` keeps all three.
        `search` matches (case-insensitively) names, ids, file name, description,
        model, finding and refusal code."""
        where: list[str] = []
        params: list[Any] = []
        if search and search.strip():
            pattern = _like_pattern(search.strip())
            where.append(
                "(" + " OR ".join(f"{column} LIKE ? ESCAPE '\\'" for column in _SEARCHED_COLUMNS) + ")"
            )
            params.extend(pattern for _ in _SEARCHED_COLUMNS)
        if states:
            where.append(f"j.state IN ({', '.join('?' for _ in states)})")
            params.extend(states)
        if urgent_only:
            where.append(
                f"(s.urgent = 1 OR {NEW_DISAGREEMENT} OR {_POSITIVE})"
                if positive_counts_as_urgent
                else "s.urgent = 1"
            )
        if unseen_only:
            where.append("r.id IS NOT NULL AND r.seen_at IS NULL")
        sql = _WORKLIST_SELECT + (" WHERE " + " AND ".join(where) if where else "")
        positive_first = f"{NEW_DISAGREEMENT} DESC, {_POSITIVE} DESC, " if positive_counts_as_urgent else ""
        # Newest first in the order the jobs came (rowid), not by their stamps: a clock that
        # was ahead (no RTC battery) kept its studies above today's work for years.
        sql += f" ORDER BY s.urgent DESC, {positive_first}j.rowid DESC LIMIT ?"
        params.append(limit)
        return [WorklistItem.from_row(dict(row)) for row in self.db.execute(sql, params).fetchall()]

    def worklist_item(self, job_id: str) -> WorklistItem | None:
        row = self.db.execute(_WORKLIST_SELECT + " WHERE j.id = ?", [job_id]).fetchone()
        return WorklistItem.from_row(dict(row)) if row else None

    def reviews_for(self, result_id: str) -> list[dict[str, Any]]:
        """The specialists' reviews of a result, newest first."""
        rows = self.db.execute(
            "SELECT * FROM reviews WHERE result_id = ? ORDER BY reviewed_at DESC", [result_id]
        ).fetchall()
        return [dict(row) for row in rows]

    def notes_for(self, study_id: str) -> list[dict[str, Any]]:
        """A study's local notes, oldest first (they read as a conversation)."""
        rows = self.db.execute(
            "SELECT * FROM notes WHERE study_id = ? ORDER BY created_at, rowid", [study_id]
        ).fetchall()
        return [dict(row) for row in rows]

    def study_contents(self, study_id: str) -> dict[str, int]:
        """What deleting a study would remove (for the confirmation the technician reads)."""
        out = {}
        for name, sql in (
            ("images", "SELECT count(*) FROM images WHERE study_id = ?"),
            (
                "results",
                "SELECT count(*) FROM results WHERE image_id IN (SELECT id FROM images WHERE study_id = ?)",
            ),
            (
                "running",
                "SELECT count(*) FROM jobs WHERE state = 'running'"
                " AND image_id IN (SELECT id FROM images WHERE study_id = ?)",
            ),
            ("notes", "SELECT count(*) FROM notes WHERE study_id = ?"),
        ):
            out[name] = int(self.db.execute(sql, [study_id]).fetchone()[0])
        return out

    def models_in_use(self) -> list[dict[str, Any]]:
        """Per model, the version, variant, backend and precision of its newest result (what the
        device actually served), with how many results it has made."""
        rows = self.db.execute(
            "SELECT model_name, model_version, variant, backend, precision, max(created_at) AS last_used,"
            " count(*) AS results FROM results GROUP BY model_name ORDER BY model_name"
        ).fetchall()
        return [dict(row) for row in rows]

    # ------------------------------------------------------------------ writes

    def set_urgent(self, study_id: str, urgent: bool, actor: str) -> None:
        """Flag (or unflag) a study urgent; its queued jobs move to the front of the queue."""
        with self.writer.transaction("flag the study"):
            cursor = self.db.execute("UPDATE studies SET urgent = ? WHERE id = ?", [int(urgent), study_id])
            if cursor.rowcount != 1:
                raise EdgeError(Code.INPUT_NOT_FOUND, f"study {study_id} is not in the store")
            self.db.execute(
                "UPDATE jobs SET priority = ?, updated_at = ? WHERE state = 'queued'"
                " AND image_id IN (SELECT id FROM images WHERE study_id = ?)",
                [URGENT_PRIORITY if urgent else 0, utc_now(), study_id],
            )
            self.writer.audit(actor, "study.urgent" if urgent else "study.not_urgent", study_id, {})

    def add_note(self, study_id: str, text: str, actor: str, *, result_id: str | None = None) -> str:
        """A local note on a study (and the result it is about). Returns the note's id."""
        text = text.strip()
        if not text:
            raise EdgeError(Code.NOTE_REFUSED, "an empty note was not stored")
        if len(text) > MAX_NOTE_CHARS:
            raise EdgeError(Code.NOTE_REFUSED, f"a note holds at most {MAX_NOTE_CHARS} characters")
        note_id = uuid7()
        with self.writer.transaction("store the note"):
            try:
                self.writer.insert(
                    "notes",
                    {
                        "id": note_id,
                        "study_id": study_id,
                        "result_id": result_id,
                        "phi_text": text,
                        "author": actor,
                        "created_at": utc_now(),
                    },
                )
            except sqlite3.IntegrityError as exc:  # the study or result is gone (deleted)
                raise EdgeError(Code.INPUT_NOT_FOUND, f"study {study_id} is not in the store") from exc
            self.writer.audit(actor, "note.added", study_id, {"note": note_id, "chars": len(text)})
        return note_id

    def mark_seen(self, result_id: str, actor: str) -> bool:
        """Record that a person looked at a result (and at its latest specialist reply: a reply
        that came after the mark is new again); False when it was already marked."""
        with self.writer.transaction("mark the result seen"):
            cursor = self.db.execute(
                "UPDATE results SET seen_at = ?, seen_by = ? WHERE id = ? AND (seen_at IS NULL"
                " OR seen_at < (SELECT max(received_at) FROM reviews WHERE result_id = results.id))",
                [utc_now(), actor, result_id],
            )
            if cursor.rowcount != 1:
                if self.db.execute("SELECT 1 FROM results WHERE id = ?", [result_id]).fetchone() is None:
                    raise EdgeError(Code.INPUT_NOT_FOUND, f"result {result_id} is not in the store")
                return False
            self.writer.audit(actor, "result.seen", result_id, {})
        return True

    def requeue_with_model(self, image_id: str, model_name: str, actor: str) -> str:
        """Queue the image for `model_name` and return that job's id.

        A new (image, model) pair gets a new job; a refused or failed one goes back to the queue
        (the model or the gate may have changed); a queued, running or done one is returned as it
        is (one result per image and model)."""
        with self.writer.transaction("queue the job"):
            image = self.db.execute(
                "SELECT i.id, s.urgent FROM images i JOIN studies s ON s.id = i.study_id WHERE i.id = ?",
                [image_id],
            ).fetchone()
            if image is None:
                raise EdgeError(Code.INPUT_NOT_FOUND, f"image {image_id} is not in the store")
            priority = URGENT_PRIORITY if image["urgent"] else 0
            now = utc_now()
            job = self.db.execute(
                "SELECT id, state FROM jobs WHERE image_id = ? AND model_name = ?", [image_id, model_name]
            ).fetchone()
            if job is None:
                job_id = self.writer.insert_job(image_id, model_name, now, priority=priority)
            elif job["state"] in ("refused", "failed"):
                job_id = str(job["id"])
                self.db.execute(
                    "UPDATE jobs SET state = 'queued', worker = NULL, claimed_at = NULL, error_code = NULL,"
                    " error_message = NULL, priority = ?, updated_at = ? WHERE id = ?",
                    [priority, now, job_id],
                )
            else:
                return str(job["id"])
            self.writer.audit(actor, "job.rerun", job_id, {"model": model_name, "image": image_id})
        return job_id

    def failed_for_a_model(self, codes: Iterable[Code], max_claims: int) -> dict[str, list[str]]:
        """Jobs that failed because their model could not be opened (`codes`), by model, claimed
        fewer than `max_claims` times (a model that looks whole and still fails: not for ever)."""
        wanted = [code.value for code in codes]
        rows = self.db.execute(
            "SELECT id, model_name FROM jobs WHERE state = 'failed' AND attempts < ?"
            f" AND error_code IN ({', '.join('?' for _ in wanted)})",
            [max_claims, *wanted],
        ).fetchall()
        found: dict[str, list[str]] = {}
        for row in rows:
            found.setdefault(row["model_name"], []).append(row["id"])
        return found

    def requeue_failed(self, job_ids: list[str], actor: str, why: str) -> int:
        """Give failed jobs back to the queue (their cause mended); how many went."""
        with self.writer.transaction("requeue failed jobs"):
            now, requeued = utc_now(), 0
            for job_id in job_ids:
                requeued += self.db.execute(
                    "UPDATE jobs SET state = 'queued', worker = NULL, claimed_at = NULL, error_code = NULL,"
                    " error_message = NULL, updated_at = ? WHERE id = ? AND state = 'failed'",
                    [now, job_id],
                ).rowcount
            if requeued:
                self.writer.audit(actor, "job.requeued", None, {"jobs": requeued, "why": why})
        return requeued

    def delete_study(self, study_id: str, actor: str) -> dict[str, int]:
        """Delete a study, everything recorded about it and its files; returns what went.

        Refused while one of its jobs is running (the worker would write into it). The rows go
        in one transaction with the audit row; the files after the commit, so a crash in between
        leaves orphan files (swept by housekeeping), never a row without its file. Outbox rows
        stay (the sequence has no holes); those not yet sent are closed with a note, so the sync
        neither sends nor waits for records that no longer exist."""
        with self.writer.transaction("delete the study"):
            if self.db.execute("SELECT 1 FROM studies WHERE id = ?", [study_id]).fetchone() is None:
                raise EdgeError(Code.INPUT_NOT_FOUND, f"study {study_id} is not in the store")
            contents = self.study_contents(study_id)
            if contents["running"]:
                raise EdgeError(
                    Code.DELETE_REFUSED,
                    "the study is being analysed right now: delete it when the job ends",
                )
            files = self._study_files(study_id)
            images = "SELECT id FROM images WHERE study_id = ?"
            results = f"SELECT id FROM results WHERE image_id IN ({images})"
            withdrawn = self.db.execute(
                "UPDATE outbox SET acked_at = ?, last_error = ? WHERE acked_at IS NULL"
                f" AND (ref_id IN ({results}) OR ref_id IN ({images}))",
                [utc_now(), WITHDRAWN_NOTE, study_id, study_id],
            ).rowcount
            # After the withdrawal above, which would close them too (same ref_id).
            tombstones = self._enqueue_tombstones(
                [row[0] for row in self.db.execute(results, [study_id])], "study"
            )
            for sql in (
                "DELETE FROM notes WHERE study_id = ?",
                f"DELETE FROM reviews WHERE result_id IN ({results})",
                f"DELETE FROM clips WHERE result_id IN ({results})",
                f"DELETE FROM results WHERE image_id IN ({images})",
                f"DELETE FROM jobs WHERE image_id IN ({images})",
                "DELETE FROM images WHERE study_id = ?",
                "DELETE FROM studies WHERE id = ?",
            ):
                self.db.execute(sql, [study_id])
            removed = {
                "images": contents["images"],
                "results": contents["results"],
                "notes": contents["notes"],
                "files": len(files),
                "unsent_withdrawn": int(withdrawn),
                "tombstones": tombstones,
            }
            self.writer.audit(actor, "study.deleted", study_id, removed)
        for path in files:
            remove_quietly(path)
        for folder in sorted({path.parent for path in files}, key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):  # not empty (other studies' files) or already gone
                folder.rmdir()
        return removed

    def job_contents(self, job_id: str) -> dict[str, Any]:
        """What deleting one job's result would remove, and whether the study keeps other rows
        (the confirmation offers "this result only" only then)."""
        job = self.db.execute(
            "SELECT j.state, j.image_id, i.study_id, r.id AS result_id FROM jobs j"
            " JOIN images i ON i.id = j.image_id LEFT JOIN results r ON r.job_id = j.id WHERE j.id = ?",
            [job_id],
        ).fetchone()
        if job is None:
            raise EdgeError(Code.INPUT_NOT_FOUND, f"job {job_id} is not in the store")
        others = self.db.execute(
            "SELECT count(*) FROM jobs WHERE id != ? AND image_id IN"
            " (SELECT id FROM images WHERE study_id = ?)",
            [job_id, job["study_id"]],
        ).fetchone()[0]
        reviews = 0
        if job["result_id"]:
            reviews = self.db.execute(
                "SELECT count(*) FROM reviews WHERE result_id = ?", [job["result_id"]]
            ).fetchone()[0]
        return {
            "state": job["state"],
            "study_id": job["study_id"],
            "result_id": job["result_id"],
            "reviews": int(reviews),
            "other_jobs": int(others),
        }

    def delete_result(self, job_id: str, actor: str) -> dict[str, int]:
        """Delete one job and its result (a wrong-model result), keeping the study, its image and
        its other results; returns what went.

        Refused while the job runs, and for the study's only job (the image would stay with
        nothing showing it: delete the study instead). Its notes stay on the study; unsent outbox
        rows for the result are closed as for a study, and the hub is told by a tombstone, as
        for a study."""
        with self.writer.transaction("delete the result"):
            contents = self.job_contents(job_id)
            if contents["state"] == "running":
                raise EdgeError(
                    Code.DELETE_REFUSED,
                    "the result is being made right now: delete it when the job ends",
                )
            if not contents["other_jobs"]:
                raise EdgeError(
                    Code.DELETE_REFUSED,
                    "this is the study's only result: delete the whole study instead",
                )
            result_id = contents["result_id"]
            files: list[Path] = []
            withdrawn = tombstones = 0
            if result_id:
                owned = self._result_files(result_id)
                withdrawn = self.db.execute(
                    "UPDATE outbox SET acked_at = ?, last_error = ? WHERE acked_at IS NULL AND ref_id = ?",
                    [utc_now(), WITHDRAWN_NOTE.replace("study", "result"), result_id],
                ).rowcount
                tombstones = self._enqueue_tombstones([result_id], "result")
                for sql in (
                    "UPDATE notes SET result_id = NULL WHERE result_id = ?",
                    "DELETE FROM reviews WHERE result_id = ?",
                    "DELETE FROM clips WHERE result_id = ?",
                    "DELETE FROM results WHERE id = ?",
                ):
                    self.db.execute(sql, [result_id])
            self.db.execute("DELETE FROM jobs WHERE id = ?", [job_id])
            if result_id:
                # A clip's video can serve another model's clip of the same recording: keep what
                # the study's remaining rows still point at.
                still = set(self.reads.referenced_files(contents["study_id"]))
                files = [self.data_dir / path for path in owned if path not in still]
            removed = {
                "results": 1 if result_id else 0,
                "reviews": contents["reviews"],
                "files": len(files),
                "unsent_withdrawn": int(withdrawn),
                "tombstones": tombstones,
            }
            self.writer.audit(actor, "result.deleted", job_id, removed)
        for path in files:
            remove_quietly(path)
        return removed

    def _enqueue_tombstones(self, result_ids: Sequence[str], what: str) -> int:
        """A tombstone in the outbox for each of these results that was queued for the hub, in
        the caller's (the deletion's) transaction: a kill after the commit loses no deletion.
        Queued is enough ("may have been synced"): the sync agent may hold the result in a batch
        on the wire right now, and a tombstone the hub cannot match yet is kept there and wins
        when the result arrives. Only the result's uuid travels, no patient data."""
        count = 0
        for result_id in result_ids:
            queued = self.db.execute(
                "SELECT 1 FROM outbox WHERE kind = 'result' AND ref_id = ?", [result_id]
            ).fetchone()
            if queued is None:
                continue
            self.writer.enqueue_outbox(
                "tombstone", result_id, {"result_uuid": result_id, "what": what, "deleted_at": utc_now()}
            )
            count += 1
        return count

    def _result_files(self, result_id: str) -> list[str]:
        """The files one result owns: its heatmap and its clip's key frames and video (never the
        image, which other results of the study share)."""
        row = self.db.execute("SELECT heatmap_path FROM results WHERE id = ?", [result_id]).fetchone()
        relative = [row[0], evidence_beside(row[0])] if row and row[0] else []
        for key_frames, video_path in self.db.execute(
            "SELECT key_frames, video_path FROM clips WHERE result_id = ?", [result_id]
        ):
            for key in json.loads(key_frames or "[]"):
                relative += [p for p in (key.get("path"), key.get("heatmap")) if p]
                relative += [evidence_beside(key["heatmap"])] if key.get("heatmap") else []
            if video_path:
                relative.append(video_path)
        return _present_grids(self.data_dir, relative)

    def _study_files(self, study_id: str) -> list[Path]:
        """Every file the study's rows point at (resolved in the data directory)."""
        return [
            self.data_dir / path
            for path in _present_grids(self.data_dir, self.reads.referenced_files(study_id))
        ]


def _present_grids(data_dir: Path, relative: list[str]) -> list[str]:
    """`relative` less the evidence grids that are not there (a result stored before grids were
    kept has only its PNG): the counts a deletion reports are of files that went."""
    return [p for p in relative if not p.endswith(EVIDENCE_SUFFIX) or (data_dir / p).exists()]
