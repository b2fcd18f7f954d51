"""The device store: the only code that writes SQL.

SQLite in WAL mode with `synchronous=FULL` is the device's source of truth. Every state change
that must be seen together commits together: an image's study, image and job rows; a job's new
state, its result and its outbox row. A crash at any instant therefore loses nothing that was
acknowledged and leaves nothing half-written. One `Store` per thread (sqlite3 connections are
not shared across threads).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edge.clock import AGE_UNKNOWN, clock_doubtful, utc_after, utc_now
from edge.errors import Code, EdgeError
from edge.ids import uuid7
from edge.store import instances
from edge.store.database import DB_NAME, connect
from edge.store.files import remove_quietly, write_atomically
from edge.store.instances import Corrections
from edge.store.leases import Leases
from edge.store.outbox import OutboxAndReviews
from edge.store.reads import Reads
from edge.store.records import NOT_ANALYSED, IngestOutcome, Job, NewImage, ResultRecord
from edge.store.technician import TechnicianActions
from edge.store.writer import Writer
from edge.study import StudyInfo


class Store(Reads):
    """Repository over the device database and the image files beside it.

    Read directly (`Reads`); written by ingest and the worker (here), the technician's marks
    (`store.technician`) and the sync agent (`store.outbox`), all through one `Writer`.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        busy_timeout_ms: int = 10_000,
        migrate: bool = True,
        reader: bool = False,
        check: bool = False,
    ) -> None:
        """Open the store, or refuse with a code (`edge.store.database`: damaged, read-only,
        unopenable, newer schema). `reader`: writes nothing, so a newer schema is opened
        read-only rather than refused (`schema.newer` says so); `check`: quick_check first."""
        self.db_path = data_dir / DB_NAME
        db, self.schema = connect(self.db_path, busy_timeout_ms, migrate=migrate, reader=reader, check=check)
        super().__init__(db, data_dir)
        self.writer = Writer(self.db, data_dir)
        self.technician = TechnicianActions(self.writer, self)
        self.outbox = OutboxAndReviews(self.writer)
        self.leases = Leases(self.writer)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ ingest

    def ingest(
        self,
        image: NewImage,
        model_names: Sequence[str],
        *,
        actor: str,
        refusal: tuple[Code, str] | None = None,
        corrections: Corrections | None = None,
    ) -> IngestOutcome:
        """Store an image and queue one job per model, atomically and idempotently.

        The file is made durable before the rows that point at it commit; if the commit fails
        the file is removed again. One rule for a SOP Instance UID that is stored already
        (`instances.verdict`): the same bytes, or the same pixels with nothing an analysis reads changed,
        are a duplicate (one image; only the jobs not yet queued are added); the same patient's
        instance with corrected attributes (or, with `corrections.pixels`, corrected pixels) is a
        new version, analysed anew (`_store_version`); anything else under the UID is another
        object reusing it: stored alongside as a new image, analysed, and audited
        `image.uid_collision` with code INSTANCE_UID_COLLISION (`IngestOutcome.collides_with`).
        Nothing sent is dropped, and the stored object is never replaced by a stranger.

        `refusal` (code, sentence) stores an image no model will analyse (the DICOM listener keeps
        every well-formed instance) with one refused job, model `NOT_ANALYSED`, saying why: the
        technician sees it in the worklist and may still re-run it with a model of their choice.
        """
        existing = self._find_image(image)
        if existing is None:
            return self._store_new(image, model_names, actor=actor, refusal=refusal)
        verdict, changes = instances.verdict(self.data_dir, existing, image, corrections)
        if verdict == "version":
            return self._store_version(existing, image, model_names, changes, actor=actor, refusal=refusal)
        if verdict == "collision":
            return self._store_new(
                image, model_names, actor=actor, refusal=refusal, collision=(existing["id"], changes)
            )
        return self._add_missing_jobs(existing, image, model_names, actor=actor)

    def _store_new(
        self,
        image: NewImage,
        model_names: Sequence[str],
        *,
        actor: str,
        refusal: tuple[Code, str] | None,
        collision: tuple[str, list[str]] | None = None,
    ) -> IngestOutcome:
        """A new image row and its jobs. A `collision` (the image holding the UID, what differs)
        is stored without the UID (unique: it stays with the image that holds it; the file keeps
        it) and audited as such instead of `image.ingested`."""
        image_id, absolute = self._write_image_file(image)
        try:
            with self.writer.transaction("store the image"):
                now = utc_now()
                study_id = self._insert_image(image_id, absolute, image, now, keep_uid=collision is None)
                detail: dict[str, Any]
                if refusal is None:
                    job_ids = tuple(self.writer.insert_job(image_id, name, now) for name in model_names)
                    detail = {"jobs": len(job_ids)}
                else:
                    code, message = refusal
                    job_ids = (self._insert_refused_job(image_id, code, message, now),)
                    detail = {"jobs": 0, "refused": code.value}
                if collision is None:
                    self.writer.audit(actor, "image.ingested", image_id, detail)
                else:
                    holder, changed = collision
                    detail |= {
                        "code": Code.INSTANCE_UID_COLLISION.value,
                        "collides_with": holder,
                        "changed": changed,  # names only, never values
                    }
                    self.writer.audit(actor, "image.uid_collision", image_id, detail)
        except sqlite3.IntegrityError:
            # Another ingester stored the same image between our lookup and our commit.
            remove_quietly(absolute)
            return self._after_race(image, model_names, actor=actor, refusal=refusal)
        except BaseException:
            remove_quietly(absolute)
            raise
        return IngestOutcome(
            image_id, study_id, job_ids, duplicate=False, collides_with=collision[0] if collision else None
        )

    def _after_race(
        self, image: NewImage, model_names: Sequence[str], *, actor: str, refusal: tuple[Code, str] | None
    ) -> IngestOutcome:
        """Another ingester stored the same image (or another object under its UID) between our
        lookup and our commit: judged again by the plain rule (no second comparison). The same
        bytes end as a duplicate; other bytes are stored alongside, without the UID, so this
        ends after one more try at most."""
        again = self._find_image(image)
        if again is None:
            raise sqlite3.IntegrityError("an image row vanished while it was being stored")
        verdict, changes = instances.verdict(self.data_dir, again, image, None)
        if verdict == "duplicate":
            return self._add_missing_jobs(again, image, model_names, actor=actor)
        return self._store_new(
            image, model_names, actor=actor, refusal=refusal, collision=(again["id"], changes)
        )

    def _insert_refused_job(self, image_id: str, code: Code, message: str, now: str) -> str:
        return self.writer.insert_job(
            image_id, NOT_ANALYSED, now, state="refused", error_code=code.value, error_message=message
        )

    def _write_image_file(self, image: NewImage) -> tuple[str, Path]:
        """A new image id and its file, durable before any row points at it."""
        image_id = uuid7()
        absolute = self.data_dir / "images" / utc_now()[:10] / f"{image_id}{image.extension}"
        write_atomically(absolute, image.data)
        return image_id, absolute

    def _insert_image(
        self, image_id: str, absolute: Path, image: NewImage, now: str, *, keep_uid: bool = True
    ) -> str:
        """The study (found or made) and the image row; returns the study id."""
        study_id = self._upsert_study(image.study, image.source)
        self.writer.insert(
            "images",
            {
                "id": image_id,
                "study_id": study_id,
                "sop_instance_uid": image.sop_instance_uid if keep_uid else None,
                "sha256": image.sha256,
                "path": str(absolute.relative_to(self.data_dir)),
                "format": image.format,
                "bytes": len(image.data),
                "width": image.width,
                "height": image.height,
                "frames": image.frames,
                "meta": json.dumps(image.meta, sort_keys=True, default=str),
                "phi_original_name": image.original_name,
                "created_at": now,
                # The clock may read behind (the hub measured it off, or it reads earlier than
                # the hub last confirmed it): this stamp's age is unknown; retention restarts it
                # once the clock is confirmed (one so stamped was deleted the day it was put right).
                "aged_from": AGE_UNKNOWN if clock_doubtful(self.outbox.sync_state()) else None,
            },
        )
        return study_id

    def _find_image(self, image: NewImage) -> dict[str, Any] | None:
        """The image with these bytes (a superseded version too), else the current version of
        this SOP Instance UID (only the current version carries it)."""
        row = self.db.execute(
            "SELECT i.id, i.study_id, i.sha256, i.meta, i.path, i.purged_at, i.superseded_by, s.study_uid,"
            " s.phi_patient_id FROM images i JOIN studies s ON s.id = i.study_id"
            " WHERE i.sha256 = ? OR i.sop_instance_uid = ? ORDER BY i.sha256 = ? DESC LIMIT 1",
            [image.sha256, image.sop_instance_uid, image.sha256],
        ).fetchone()
        return dict(row) if row else None

    def _store_version(
        self,
        existing: dict[str, Any],
        image: NewImage,
        model_names: Sequence[str],
        changes: Sequence[str],
        *,
        actor: str,
        refusal: tuple[Code, str] | None,
    ) -> IngestOutcome:
        """A corrected instance: a new image row that takes over the SOP Instance UID, its jobs,
        and an `image.corrected` audit row naming what changed (names only). The version it
        replaces keeps its jobs and results, marked `superseded_by`; its jobs not yet analysed
        end `INSTANCE_SUPERSEDED`. The study's attributes become the corrected ones (what the
        worklist shows and what travels: age, sex, modality, body part, date)."""
        image_id, absolute = self._write_image_file(image)
        try:
            with self.writer.transaction("store the corrected instance"):
                now = utc_now()
                released = self.db.execute(
                    "UPDATE images SET sop_instance_uid = NULL, superseded_by = ?, superseded_at = ?"
                    " WHERE id = ? AND superseded_by IS NULL",
                    [image_id, now, existing["id"]],
                )
                if released.rowcount != 1:
                    raise sqlite3.IntegrityError("the stored version was replaced meanwhile")
                study_id = self._insert_image(image_id, absolute, image, now)
                self._correct_study(study_id, image.study)
                self.db.execute(
                    "UPDATE jobs SET state = 'refused', error_code = ?, error_message = ?, updated_at = ?,"
                    " lease_until = NULL WHERE image_id = ? AND state = 'queued'",
                    [
                        Code.INSTANCE_SUPERSEDED.value,
                        f"a corrected version of this instance (image {image_id}) is analysed instead",
                        now,
                        existing["id"],
                    ],
                )
                detail: dict[str, Any] = {"supersedes": existing["id"], "changed": list(changes)}
                if refusal is None:
                    job_ids = tuple(self.writer.insert_job(image_id, name, now) for name in model_names)
                    detail["jobs"] = len(job_ids)
                else:
                    job_ids = (self._insert_refused_job(image_id, refusal[0], refusal[1], now),)
                    detail |= {"jobs": 0, "refused": refusal[0].value}
                self.writer.audit(actor, "image.corrected", image_id, detail)
        except sqlite3.IntegrityError:
            remove_quietly(absolute)
            return self._after_race(image, model_names, actor=actor, refusal=refusal)
        except BaseException:
            remove_quietly(absolute)
            raise
        return IngestOutcome(image_id, study_id, job_ids, duplicate=False)

    def _correct_study(self, study_id: str, study: StudyInfo) -> None:
        self.db.execute(
            "UPDATE studies SET patient_age_years = ?, patient_sex = ?, modality = ?, body_part = ?,"
            " study_date = ? WHERE id = ?",
            [
                study.patient_age_years,
                study.patient_sex,
                study.modality,
                study.body_part,
                study.study_date,
                study_id,
            ],
        )

    def _add_missing_jobs(
        self,
        existing: dict[str, Any],
        image: NewImage,
        model_names: Sequence[str],
        *,
        actor: str,
    ) -> IngestOutcome:
        image_id = existing["id"]
        with self.writer.transaction("queue the jobs"):
            now = utc_now()
            job_ids = []
            # A superseded version (its bytes sent again) gets no new jobs: the current one is analysed.
            for name in () if existing["superseded_by"] else model_names:
                row = self.db.execute(
                    "SELECT id FROM jobs WHERE image_id = ? AND model_name = ?", [image_id, name]
                ).fetchone()
                job_ids.append(row["id"] if row else self.writer.insert_job(image_id, name, now))
            if job_ids:
                # A model now accepts what was stored unanalysed: its "not analysed" entry goes.
                self.db.execute(
                    "DELETE FROM jobs WHERE image_id = ? AND model_name = ? AND state = 'refused'",
                    [image_id, NOT_ANALYSED],
                )
            else:
                job_ids = [
                    row["id"] for row in self.db.execute("SELECT id FROM jobs WHERE image_id = ?", [image_id])
                ]
            self.writer.audit(actor, "image.duplicate", image_id, {})
        return IngestOutcome(image_id, existing["study_id"], tuple(job_ids), duplicate=True)

    def _upsert_study(self, study: StudyInfo, source: str) -> str:
        if study.study_uid:
            row = self.db.execute("SELECT id FROM studies WHERE study_uid = ?", [study.study_uid]).fetchone()
            if row:
                return str(row["id"])
        study_id = uuid7()
        self.writer.insert(
            "studies",
            {"id": study_id, **study.__dict__, "source": source, "received_at": utc_now()},
        )
        return study_id

    # ------------------------------------------------------------------ the worker's side

    def claim_job(self, worker: str, job_id: str | None = None, *, lease_s: float = 300.0) -> Job | None:
        """Take the next queued job (or the named one) for `worker`, in one statement, with a
        lease of `lease_s` seconds that the worker renews (`store.leases`)."""
        target = (
            "?"
            if job_id
            else "(SELECT id FROM jobs WHERE state = 'queued' ORDER BY priority DESC, created_at LIMIT 1)"
        )
        now = utc_now()
        params: list[Any] = [worker, now, now, utc_after(lease_s)]
        if job_id:
            params.append(job_id)
        with self.writer.transaction("claim a job"):
            row = self.db.execute(
                "UPDATE jobs SET state = 'running', worker = ?, claimed_at = ?, updated_at = ?,"
                " lease_until = ?, attempts = attempts + 1, error_code = NULL, error_message = NULL"
                f" WHERE id = {target} AND state = 'queued' RETURNING *",
                params,
            ).fetchone()
        return Job.from_row(dict(row)) if row else None

    def complete_job(
        self, job: Job, result: ResultRecord, result_id: str | None = None, clip: dict[str, Any] | None = None
    ) -> str:
        """Record a result: job state, result row and outbox row commit as one transaction.

        `result_id` may be chosen by the caller when files named after it (the heatmap) were
        written first.
        """
        result_id = result_id or uuid7()
        now = utc_now()
        with self.writer.transaction("store the result"):
            self._finish(job, "done", now)
            self.writer.insert(
                "results",
                {
                    "id": result_id,
                    "job_id": job.id,
                    "image_id": job.image_id,
                    **result.to_row(),
                    "created_at": now,
                },
            )
            if clip is not None:
                self._insert_clip(result_id, result.model_name, clip, now)
            self.writer.enqueue_outbox("result", result_id, {"result_id": result_id, "job_id": job.id})
        return result_id

    def record_clip(
        self,
        key_image: NewImage,
        result: ResultRecord,
        result_id: str,
        clip: dict[str, Any],
        *,
        actor: str,
    ) -> IngestOutcome:
        """A clip analysed outside the job queue (a file, a live capture): its key frame image,
        a job already done, the result, the clip and the outbox row, in one transaction. Files
        named by the clip (key frames, heatmaps, video) must already be on disk."""
        image_id, absolute = self._write_image_file(key_image)
        try:
            with self.writer.transaction("store the clip"):
                now = utc_now()
                study_id = self._insert_image(image_id, absolute, key_image, now)
                job_id = self.writer.insert_job(
                    image_id, result.model_name, now, state="done", attempts=1, worker=actor, claimed_at=now
                )
                self.writer.insert(
                    "results",
                    {
                        "id": result_id,
                        "job_id": job_id,
                        "image_id": image_id,
                        **result.to_row(),
                        "created_at": now,
                    },
                )
                self._insert_clip(result_id, result.model_name, clip, now)
                self.writer.enqueue_outbox("result", result_id, {"result_id": result_id, "job_id": job_id})
                self.writer.audit(actor, "clip.recorded", result_id, {"frames": clip.get("frames_analysed")})
        except BaseException:
            remove_quietly(absolute)
            raise
        return IngestOutcome(image_id, study_id, (job_id,), duplicate=False)

    def _insert_clip(self, result_id: str, model_name: str, clip: dict[str, Any], now: str) -> None:
        row = {"id": uuid7(), "result_id": result_id, "model_name": model_name, "created_at": now}
        for key, value in clip.items():
            row[key] = json.dumps(value) if key in ("roi", "series", "key_frames", "events") else value
        self.writer.insert("clips", row)

    def fail_job(self, job: Job, code: Code, message: str, *, refused: bool = False) -> None:
        """End a job without a result: `refused` for inputs a model must not score."""
        with self.writer.transaction("record the failure"):
            self._finish(job, "refused" if refused else "failed", utc_now(), code, message)
            self.writer.audit(
                job.worker or "worker",
                f"job.{'refused' if refused else 'failed'}",
                job.id,
                {"code": code.value},
            )

    def _finish(
        self,
        job: Job,
        state: str,
        now: str,
        code: Code | None = None,
        message: str | None = None,
    ) -> None:
        cursor = self.db.execute(
            "UPDATE jobs SET state = ?, updated_at = ?, error_code = ?, error_message = ?,"
            " lease_until = NULL WHERE id = ? AND state = 'running' AND worker IS ?",
            [state, now, code.value if code else None, message, job.id, job.worker],
        )
        if cursor.rowcount != 1:
            # The job was requeued and claimed by someone else meanwhile: their answer stands.
            raise EdgeError(Code.STORE_WRITE_FAILED, f"job {job.id} is no longer held by {job.worker}")

    # ------------------------------------------------------------------ housekeeping

    def mark_purged(self, image_id: str) -> None:
        with self.writer.transaction("record a purge"):
            self.db.execute("UPDATE images SET purged_at = ? WHERE id = ?", [utc_now(), image_id])
            self.writer.audit("retention", "image.purged", image_id, {})

    def restart_misstamped_ages(self, earliest: str, latest: str) -> int:
        """Start now the retention age of the images stamped outside [`earliest`, `latest`] (by a
        clock that was wrong: `clock.plausible_stamps`) whose age has not been restarted, and of
        those whose restart itself a clock ahead stamped (past `latest`); how many."""
        with self.writer.transaction("restart misstamped ages"):
            changed = self.db.execute(
                "UPDATE images SET aged_from = ? WHERE purged_at IS NULL AND (aged_from IS NULL"
                " AND (created_at < ? OR created_at > ?) OR aged_from > ?)",
                [utc_now(), earliest, latest, latest],
            ).rowcount
            if changed:
                self.writer.audit("retention", "image.age_restarted", None, {"images": changed})
        return changed

    def checkpoint(self) -> None:
        """Fold the WAL back into the database file and truncate it (keeps the WAL from growing)."""
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    # ------------------------------------------------------------------ audit

    def audit(self, actor: str, action: str, subject_id: str | None, detail: dict[str, Any]) -> None:
        """Record an event of its own (e.g. a refused input that was never stored)."""
        with self.writer.transaction("write the audit trail"):
            self.writer.audit(actor, action, subject_id, detail)
